"""`prepare` converts a GGUF registry model once, even when several processes ask for it at the same time."""

from __future__ import annotations

import threading
import time

from tunelab.models import loading
from tunelab.models.registry import REGISTRY, cache_dir, is_prepared

NAME = "smollm2-135m-instruct"


def test_concurrent_prepares_convert_once_and_all_get_the_prepared_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    conversions: list[int] = []

    def slow_convert(model, target):  # stands in for the real conversion: takes a while, then marks it done
        conversions.append(threading.get_ident())
        time.sleep(0.5)
        target.mkdir(parents=True)
        (target / ".prepared").write_text("done\n")

    monkeypatch.setattr(loading, "_convert", slow_convert)
    results: list = []
    workers = [threading.Thread(target=lambda: results.append(loading.prepare(NAME))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(conversions) == 1  # each thread opens the lock file itself, so they exclude each other as processes do
    assert results == [cache_dir(REGISTRY[NAME])] * 3 and is_prepared(REGISTRY[NAME])


def test_force_converts_again_under_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    calls: list[str] = []
    monkeypatch.setattr(loading, "_convert", lambda model, target: calls.append(model.name))
    target = cache_dir(REGISTRY[NAME])
    target.mkdir(parents=True)
    (target / ".prepared").write_text("done\n")
    assert loading.prepare(NAME) == target and calls == []
    assert loading.prepare(NAME, force=True) == target and calls == [NAME]
