"""The bundled demo data and the demo's config: valid, balanced, and large enough to move the needle."""

from __future__ import annotations

from collections import Counter

from tunelab.data.readers import read_file
from tunelab.data.splits import load_task_data
from tunelab.demo import demo_config, demo_data_path


def test_demo_data_is_valid_balanced_and_unique():
    records = read_file(demo_data_path())
    assert len(records) >= 400
    assert all(r.problem is None and set(r.fields) == {"text", "label"} for r in records)
    counts = Counter(r.fields["label"] for r in records)
    assert set(counts) == {"positive", "negative"} and counts["positive"] == counts["negative"]
    texts = [r.fields["text"].strip().lower() for r in records]
    assert len(set(texts)) == len(texts)


def test_demo_config_splits_the_bundled_data_without_overlap(tmp_path):
    data = load_task_data(demo_config(str(tmp_path)))
    assert data.labels == ["negative", "positive"]
    splits = [{r.where for r in split} for split in (data.train, data.validation, data.test)]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert len(data.test) >= 80
