"""Adapters loaded and unloaded while the server runs: vLLM's `POST /v1/load_lora_adapter` and
`POST /v1/unload_lora_adapter`, routed only on a server started with `--allow-adapter-loading`.

What may be loaded: a completed tunelab run directory under `--adapter-root` (its resolved path, symlinks
followed, so a server never reads a path its operator did not hand it), whose adapter was trained from a base the
server already holds with adapters of the same type, task type and labels (`Catalog.adapter_plan`). What may be
unloaded: an adapter on a shared base with no request in flight; not a base, not a model of its own (a full
fine-tune), and not the last adapter on its base (PEFT cannot keep a model with none). At most `--max-adapters`
adapters are loaded, at start and at run time together: loading one more unloads the least recently asked-for
adapter that has no request in flight, and is refused (503) while every one has.

Why it is safe under load: the catalog changes on the event loop's thread, where a request looks its model up and
is submitted with no await in between, so a request finds an adapter whole or not at all; the PEFT model changes
on the batcher's worker (`Batcher.call`), between decoding steps. An adapter leaves `catalog.models` (new requests
get a 404) before the worker deletes it, and only while nothing is in flight for it. One change at a time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.runs import RunDir
from tunelab.serve.catalog import AdapterPlan, Catalog, CatalogError, Served, SharedBase
from tunelab.serve.errors import not_served
from tunelab.serve.jobs import JobRunner
from tunelab.serve.protocol import ApiError
from tunelab.serve.settings import ServeSettings

RETRY = {"Retry-After": "1"}


class RuntimeAdapters:
    """The adapters of one server's catalog, loaded and unloaded on request."""

    def __init__(self, catalog: Catalog, settings: ServeSettings, jobs: JobRunner):
        self.catalog, self.settings, self.jobs = catalog, settings, jobs
        self._changing = asyncio.Lock()
        if len(catalog.adapters) > settings.max_adapters:
            raise CatalogError(
                f"{len(catalog.adapters)} adapter runs are served from the start, over --max-adapters "
                f"{settings.max_adapters}: raise it, or serve fewer"
            )

    async def load(self, name: str, path: str) -> str:
        """Serve the adapter of the run at `path` as `name`; returns vLLM's success message (naming the adapter
        unloaded to make room, if one was). A change, once begun, ends even if its client goes away: the model and
        the catalog never disagree."""
        return await asyncio.shield(self._load(name, path))

    async def unload(self, name: str) -> str:
        """Stop serving the adapter `name` and delete it from its base; returns vLLM's success message."""
        return await asyncio.shield(self._unload(name))

    async def _load(self, name: str, path: str) -> str:
        async with self._changing:
            if name in self.catalog.models:
                raise ApiError(
                    400,
                    f"'{name}' is already served; unload it first, or give the adapter another lora_name",
                    param="lora_name",
                    code="adapter_exists",
                )
            run = self._run(path)
            try:
                plan = await asyncio.to_thread(self.catalog.adapter_plan, name, run)
            except (TunelabError, OSError) as error:  # not a run, not complete, not for a served base; unreadable
                raise ApiError(400, f"lora_path: {error}", param="lora_path", code="invalid_adapter") from None
            evicted = self._room_for(plan.key)
            served = await self._swap(plan, evicted)
            self.catalog.register(served, plan.key)
            self.jobs.touch(name)
        made_room = (
            f" '{evicted}', the least recently used adapter, was unloaded (--max-adapters "
            f"{self.settings.max_adapters})."
            if evicted
            else ""
        )
        return f"Success: LoRA adapter '{name}' added successfully.{made_room}"

    async def _unload(self, name: str) -> str:
        async with self._changing:
            self._check_unloadable(name)
            shared = self.catalog.shared_base(name)
            self.catalog.withdraw(name)
            self.jobs.last_used.pop(name, None)
            await asyncio.wrap_future(self.jobs.batcher.call(lambda: self._delete(shared, name)))
        return f"Success: LoRA adapter '{name}' removed successfully."

    def _delete(self, shared: SharedBase, name: str) -> None:
        """On the worker: delete the adapter from its base, and the prompt beginnings cached for it (an adapter
        loaded later under its name must not reuse them)."""
        shared.unload(name)
        self.jobs.batcher.forget_adapter(name)

    def _run(self, path: str) -> RunDir:
        """The run directory `path` names (relative: under the root), if it resolves inside `--adapter-root`."""
        root = self.settings.adapter_root
        try:
            resolved = (root / Path(path)).resolve()
        except (OSError, ValueError) as error:  # a NUL byte, a name too long, a loop of links
            raise ApiError(400, f"lora_path is not a path here ({error})", param="lora_path") from None
        if not resolved.is_relative_to(root):
            raise ApiError(
                400,
                f"lora_path '{path}' is outside this server's --adapter-root; give a run directory under it",
                param="lora_path",
                code="path_outside_root",
            )
        return RunDir(resolved)

    def _room_for(self, key: tuple) -> str | None:
        """The adapter to unload so that one more for the base `key` fits under --max-adapters (None: it fits):
        the least recently asked-for one with no request in flight that is not the last on another base."""
        adapters = self.catalog.adapters
        if len(adapters) < self.settings.max_adapters:
            return None
        on_base = Counter(adapters.values())
        idle = [
            model_id
            for model_id, base in adapters.items()
            if not self.jobs.in_flight[model_id] and (base == key or on_base[base] > 1)
        ]
        if not idle:
            raise ApiError(
                503,
                f"{len(adapters)} adapters are loaded, this server's --max-adapters, and every one that could make "
                "room has requests in flight; retry when they are answered, or unload one",
                type="server_error",
                code="adapters_busy",
                headers=RETRY,
            )
        return min(idle, key=lambda model_id: self.jobs.last_used.get(model_id, 0))

    async def _swap(self, plan: AdapterPlan, evicted: str | None) -> Served:
        """Load `plan`'s adapter, then unload `evicted` (if any), on the worker; returns the new entry. The evicted
        adapter stops being served first, and is served again if the load fails."""
        if evicted is None:
            return await asyncio.wrap_future(self.jobs.batcher.call(plan.load))
        key, shared = self.catalog.adapters[evicted], self.catalog.shared_base(evicted)
        withdrawn = self.catalog.withdraw(evicted)

        def swap() -> Served:
            served = plan.load()
            self._delete(shared, evicted)
            return served

        try:
            served = await asyncio.wrap_future(self.jobs.batcher.call(swap))
        except Exception:
            self.catalog.register(withdrawn, key)
            raise
        self.jobs.last_used.pop(evicted, None)
        return served

    def _check_unloadable(self, name: str) -> None:
        """Refuse to unload an id that is not served, not an adapter, busy, or the last adapter on its base."""
        if name not in self.catalog.models:
            raise not_served(name, self.catalog.models, "lora_name")
        if name not in self.catalog.adapters:
            raise ApiError(
                400,
                f"'{name}' is not an adapter on a shared base (a base, or a model of its own such as a full "
                "fine-tune, is served until the server stops)",
                param="lora_name",
                code="not_an_adapter",
            )
        busy = self.jobs.in_flight[name]
        if busy:
            raise ApiError(
                409,
                f"'{name}' has {busy} request(s) in flight; retry when they are answered",
                param="lora_name",
                code="adapter_busy",
                headers=RETRY,
            )
        base = self.catalog.adapters[name]
        if Counter(self.catalog.adapters.values())[base] == 1:
            raise ApiError(
                409,
                f"'{name}' is the last adapter on its base {base[0]}, which PEFT cannot keep without one; load another "
                "adapter for that base first",
                param="lora_name",
                code="last_adapter",
            )
