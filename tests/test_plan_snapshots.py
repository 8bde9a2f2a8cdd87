"""Every config in configs/ resolves, plans and encodes its first batch exactly as it did when the snapshots were
taken (issue 30: a redesign that moves code must not change what a recipe trains on).

For each configs/*.yaml, tests/snapshots/<name>.json holds three things, each checked by its own test:

- `config`: the resolved config (`config_to_yaml`'s content), data paths written relative to configs/ so the
  snapshot does not depend on where the checkout lies;
- `plan`: the training order `tunelab train` plans (`pipeline.train`'s steps up to `plan_training`): its length,
  a sha256 of the whole order, its first 20 draws, and the plan's batch, steps, stage boundaries and stages;
- `first_batch`: the first per-device training batch as the trainer reads it (the run's feed, in plan order,
  through the run's collator): every tensor's shape, dtype and a sha256 of its values, the first row's first 32
  input ids, and any non-tensor field as it is.

Nothing trains and no weight is loaded: the feed reads only what the model is (its attention, its method), so it
gets the model built from its config on PyTorch's meta device. Tokenizers are the registry models' prepared
copies in TUNELAB_HOME, as every run's. The whole of each data file is read (nothing is sampled): a cap would
change the plan. The batch depends on the machine in one way: on a CPU, decoder rows are packed per example
(`training.attention: auto` is sdpa_varlen there); the snapshots were taken on a CPU, so the test runs on one.

The test never writes a snapshot. After a change that is meant to alter a plan, rewrite them on purpose:

    PYTHONPATH=src .venv/bin/python tests/test_plan_snapshots.py --write [NAME ...]
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from tunelab.config import RunConfig, load_config
from tunelab.data.blocks import block_taskset
from tunelab.data.plan import plan_training
from tunelab.data.taskset import TaskSet, load_taskset
from tunelab.kinds import kind_of_run
from tunelab.models.attention import use_attention
from tunelab.models.family import model_family
from tunelab.models.loading import config_tokenizer, resolve_source
from tunelab.train.objectives import objective_of

from helpers import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
READABLE_DRAWS = 20
READABLE_IDS = 32

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not SHARED_DATA.exists(), reason=f"{SHARED_DATA} (the shared datasets) is not beside the checkout"
    ),
    pytest.mark.skipif(
        torch.cuda.is_available(), reason="the snapshots hold a CPU's packing; on a GPU decoder rows pack otherwise"
    ),
]


def config_names() -> list[str]:
    return sorted(path.stem for path in CONFIGS.glob("*.yaml"))


def sha256(value) -> str:
    return hashlib.sha256(value if isinstance(value, bytes) else json.dumps(value).encode()).hexdigest()


def portable(value):
    """The resolved config with every absolute path (the data files, resolved against configs/) written relative
    to configs/ again, as the YAML has them."""
    if isinstance(value, dict):
        return {key: portable(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [portable(inner) for inner in value]
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.relpath(value, CONFIGS)
    return value


def weightless_model(config: RunConfig, tasks: TaskSet):
    """The model `pipeline.setup` hands the feed, adapted by the run's method and switched to the run's attention
    as setup does, but built from the model's config on the meta device: no weight is read."""
    source = resolve_source(config.model.name, config.model.revision)
    decoder = model_family(config.model) == "decoder"
    if decoder:
        model_class, options = AutoModelForCausalLM, {}
    else:
        model_class, options = AutoModelForSequenceClassification, {"num_labels": len(tasks.labels)}
    with torch.device("meta"):
        model = model_class.from_config(AutoConfig.from_pretrained(source, **options))
    model, _ = objective_of(config).adapt(model, config, tasks)
    if decoder:
        use_attention(model, config.training.attention, config.training.compile)
    return model


def describe_batch(batch: dict) -> dict:
    """Every field of a collated batch: a tensor by shape, dtype and a hash of its values; anything else as is."""
    fields = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            values = value.detach().cpu().contiguous()
            fields[key] = {
                "shape": list(values.shape),
                "dtype": str(values.dtype),
                "sha256": sha256(values.reshape(-1).view(torch.uint8).numpy().tobytes()),
            }
        else:
            fields[key] = {"value": value}
    ids = batch["input_ids"]
    return {"fields": fields, "first_row_ids": ids[0, :READABLE_IDS].tolist()}


@functools.cache
def computed(name: str) -> dict:
    """A config's snapshot as today's code makes it, read and planned as `tunelab train` does."""
    config = load_config(CONFIGS / f"{name}.yaml")
    tasks = load_taskset(config)
    tokenizer = config_tokenizer(config)
    if config.mixture is None and not kind_of_run(config).prompted:  # raw text, trained in blocks
        block_taskset(tasks, tokenizer, config.data)
    plan = plan_training(config, tasks, one_task_per_batch=objective_of(config).one_task_per_batch)
    order = [list(draw) for draw in plan.order]
    feed = objective_of(config).feed(weightless_model(config, tasks), config, tasks, plan, tokenizer)
    return {
        "config": portable(config.model_dump(mode="json")),
        "plan": {
            "length": len(order),
            "sha256": sha256(order),
            "first_draws": order[:READABLE_DRAWS],
            "global_batch": plan.global_batch,
            "steps": plan.steps,
            "steps_per_epoch": plan.steps_per_epoch,
            "boundaries": plan.boundaries,
            "stages": plan.stages,
        },
        "first_batch": describe_batch(feed.collator(feed.train[: config.training.batch_size])),
    }


def stored(name: str) -> dict:
    path = SNAPSHOTS / f"{name}.json"
    if not path.exists():
        pytest.fail(f"no snapshot {path} for configs/{name}.yaml: write it with `python {__file__} --write`")
    return json.loads(path.read_text())


def test_every_config_has_a_snapshot():
    assert sorted(path.stem for path in SNAPSHOTS.glob("*.json")) == config_names()


SNAPSHOT_KINDS = {
    "classification": "classification",
    "causal_lm": "generation",
    "language_modeling": "language_modeling",
}
"""The configs' task types when the snapshots were written, as the data.kind each is now."""


def with_added_keys(old: dict) -> dict:
    """A snapshot's config with every section key added since it was written (issue 31's conversation keys, issue
    32's preference keys and `training.preference`, `eval.judge`) read as its default, as loading that YAML today
    reads it. A key the snapshot holds is kept as it is, so a changed default or a changed value still fails."""
    defaults = json.loads(RunConfig().model_dump_json())
    return {
        key: {**defaults[key], **value} if isinstance(value, dict) and isinstance(defaults.get(key), dict) else value
        for key, value in old.items()
    }


def in_new_words(old: dict) -> dict:
    """A snapshot's config, written in the words before issue 30's one vocabulary, as today's config says the same:
    `task_type` becomes `data.kind` (a mixture's tasks declare their own kinds, so its data.kind is the default),
    `mixture.architecture` the top-level `objective` (absent, that is derived: text_to_text for a mixture, the
    kind's own for a data: run), and a key added since reads as its default (`with_added_keys`). Nothing else
    differs."""
    if "task_type" not in old:
        return with_added_keys(old)
    new = {key: value for key, value in with_added_keys(old).items() if key != "task_type"}
    mixture = old["mixture"]
    kind = "classification" if mixture is not None else SNAPSHOT_KINDS[old["task_type"]]
    new["data"] = {**new["data"], "kind": kind}
    new["objective"] = None
    if mixture is not None:
        new["mixture"] = {key: value for key, value in mixture.items() if key != "architecture"}
        new["objective"] = None if mixture["architecture"] == "text_to_text" else mixture["architecture"]
    return new


@pytest.mark.parametrize("name", config_names())
def test_the_config_resolves_as_before(name):
    assert computed(name)["config"] == in_new_words(stored(name)["config"])


@pytest.mark.parametrize("name", config_names())
def test_the_planned_order_is_as_before(name):
    assert computed(name)["plan"] == stored(name)["plan"]


@pytest.mark.parametrize("name", config_names())
def test_the_first_batch_is_encoded_as_before(name):
    assert computed(name)["first_batch"] == stored(name)["first_batch"]


def readable_json(value) -> str:
    """JSON with one key per line but each list of plain values (a draw, a shape, token ids) on one line."""
    text = json.dumps(value, indent=1)
    return re.sub(r"\[\n[^\[\]{}]*?\]", lambda found: re.sub(r"\n\s*", "", found.group()), text) + "\n"


def write_snapshots(names: list[str]) -> None:
    SNAPSHOTS.mkdir(exist_ok=True)
    for name in names or config_names():
        (SNAPSHOTS / f"{name}.json").write_text(readable_json(computed(name)))
        print(f"wrote {SNAPSHOTS / name}.json", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--write"]:
        sys.exit(
            f"usage: python {sys.argv[0]} --write [NAME ...]   (writes the snapshots of configs/NAME.yaml, default "
            f"every config's, in {SNAPSHOTS})"
        )
    write_snapshots(sys.argv[2:])
