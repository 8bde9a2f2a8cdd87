"""Multi-task adapters: one LoRA adapter per task over one frozen base, trained in a single run.

Every batch holds examples of one task only and is routed to that task's
adapter (plus an optional SHARED adapter that every task trains), so tasks
share the base model's knowledge without overwriting each other's update. At
inference the adapter is again picked by task name with `route`.

PEFT keeps all adapters in the same modules; `route` decides which of them take
part in the forward pass and receive gradients. Two PEFT behaviours shape the
design:

- ``set_adapter`` sets ``requires_grad=False`` on every inactive adapter, so an
  optimizer built after a route would never see the other tasks' weights:
  `TaskRoutedTrainer.create_optimizer` makes every adapter trainable first.
- An inactive adapter gets no gradient (``grad is None`` once the trainer zeroes
  gradients with ``set_to_none``), and torch's AdamW skips such parameters
  entirely: no moment update and no weight decay, so a task's adapter only
  moves on its own batches.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PreTrainedModel, Trainer

from tunelab.data.encode import TASK_KEY
from tunelab.methods.base import MethodError

SHARED = "shared"
MANIFEST = "task_adapters.json"
# PEFT saves an adapter named "default" in the save directory itself rather than in a subfolder.
_PEFT_DEFAULT = "default"
# PEFT warns that an adapter name contained in the parameter prefix may re-initialise its weights on load.
_LORA_PREFIX = "lora_"


class TaskAdapterError(MethodError):
    """A task name that cannot be an adapter, or a task with no adapter, with the names that can be used."""


def apply_task_adapters(model: PreTrainedModel, tasks: list[str], lora: LoraConfig, shared: bool = False) -> PeftModel:
    """Wrap `model` with one LoRA adapter per task (named after it) and, if asked, a SHARED one.

    The base stays frozen and every adapter is left trainable, so an optimizer
    built right after sees all of them; call `route` before each forward.
    """
    _check_task_names(model, tasks)
    names = [*tasks, SHARED] if shared else list(tasks)
    peft_model = get_peft_model(model, copy.deepcopy(lora), adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, copy.deepcopy(lora))
    make_all_adapters_trainable(peft_model)
    return peft_model


def _check_task_names(model: nn.Module, tasks: list[str]) -> None:
    """Reject names PEFT would mishandle.

    Besides non-identifiers and duplicates: SHARED and "default" are taken, a
    substring of "lora_" confuses PEFT's loading, and a name equal to a module
    name component (e.g. "mlp") makes PEFT's save filter drop that module's
    weights from every *other* adapter, since it filters keys by ".name.".
    """
    if not tasks:
        raise TaskAdapterError("task adapters need at least one task name")
    if len(set(tasks)) != len(tasks):
        raise TaskAdapterError(f"task names must be unique, got {tasks}")
    module_parts = {part for name, _ in model.named_modules() for part in name.split(".")}
    for task in tasks:
        if not task.isidentifier():
            raise TaskAdapterError(f"task name {task!r} must be a Python identifier (letters, digits, underscores)")
        if task in (SHARED, _PEFT_DEFAULT) or task in _LORA_PREFIX or task in module_parts:
            raise TaskAdapterError(
                f"task name {task!r} collides with the name '{SHARED}', PEFT's '{_PEFT_DEFAULT}' adapter, the "
                f"'{_LORA_PREFIX}' parameter prefix, or a module name of the model; rename the task"
            )


def task_names(model: PeftModel) -> list[str]:
    """The tasks that have an adapter, in the order they were added."""
    return [name for name in model.peft_config if name != SHARED]


def route(model: PeftModel, task: str) -> None:
    """Make `task`'s adapter (with SHARED when present) the only active and trainable adapters.

    Adapters loaded for inference (their config's ``inference_mode``) stay
    frozen. The list form of ``set_adapter`` lives on ``model.base_model``:
    ``PeftModel.set_adapter`` takes a single name.
    """
    known = task_names(model)
    if task not in known:
        raise TaskAdapterError(f"no adapter for task {task!r}; known tasks: {', '.join(known)}")
    active = [SHARED, task] if SHARED in model.peft_config else [task]
    inference = model.peft_config[task].inference_mode
    model.base_model.set_adapter(active, inference_mode=inference)
    if not inference and not all(p.requires_grad for name in active for p in adapter_parameters(model, name)):
        raise TaskAdapterError(f"PEFT left part of adapters {active} frozen after routing to {task!r}")


def make_all_adapters_trainable(model: PeftModel) -> None:
    """Let every adapter require gradients, e.g. while an optimizer collects its parameters."""
    model.set_requires_grad(list(model.peft_config), requires_grad=True)


def adapter_parameters(model: nn.Module, adapter: str) -> list[nn.Parameter]:
    """The parameters PEFT's tuner layers hold for one adapter, found by structure, not by matching parameter names."""
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for layer_name in module.adapter_layer_names:
            container = getattr(module, layer_name)
            if adapter in container:
                entry = container[adapter]
                params = [entry] if isinstance(entry, nn.Parameter) else entry.parameters()
                found.update((id(p), p) for p in params)
    return list(found.values())


def trainable_by_adapter(model: PeftModel) -> dict[str, int]:
    """Parameter count each adapter trains over the run, whatever the current route has frozen."""
    return {name: sum(p.numel() for p in adapter_parameters(model, name)) for name in model.peft_config}


def save_task_adapters(model: PeftModel, directory: Path) -> None:
    """Write every adapter to ``directory/<name>/`` (PEFT's layout for non-default names) plus a manifest."""
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    manifest = {"tasks": task_names(model), "shared": SHARED in model.peft_config}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def merge_task_adapter(model: PeftModel, task: str) -> PreTrainedModel:
    """One task's adapter (with the shared one, when there is one) folded into the base weights: a standalone
    transformers model that answers that task as the routed model does (`tunelab merge RUN --task NAME`)."""
    route(model, task)
    active = [SHARED, task] if SHARED in model.peft_config else [task]
    return model.merge_and_unload(adapter_names=active)


def load_task_adapters(base: PreTrainedModel, directory: Path) -> PeftModel:
    """Rebuild the multi-task model from a fresh base and `save_task_adapters`'s output, frozen and in eval mode."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    names = [*manifest["tasks"], SHARED] if manifest["shared"] else list(manifest["tasks"])
    model = PeftModel.from_pretrained(base, directory / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(directory / name, adapter_name=name)
    model.eval()
    return model


class TaskRoutedTrainer(Trainer):
    """A `Trainer` that routes each single-task batch to its adapter before the forward pass.

    Batches carry ``inputs["task"]``: the task name, or a list of names that
    must all be equal (what a collator produces by copying each example's
    ``task``). Needs ``remove_unused_columns=False`` so the key reaches the
    collator and `compute_loss`. Every batch must hold one task: the training
    plan orders the examples in single-task global batches
    (`tunelab.data.plan.single_task_batches`), read in that order; pass
    ``eval_dataset`` as a dict of single-task datasets (the Trainer then reports
    ``eval_<task>_loss``).
    """

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Build the optimizer over every adapter, not only the one the last route left trainable."""
        make_all_adapters_trainable(self.model)
        return super().create_optimizer(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        route(self.model, batch_task(inputs.pop(TASK_KEY)))
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )


def batch_task(task: str | Sequence[str]) -> str:
    """The one task of a batch; a mixed batch is an error, since one forward pass uses one route."""
    if isinstance(task, str):
        return task
    distinct = sorted(set(task))
    if len(distinct) != 1:
        raise TaskAdapterError(
            f"a batch must hold one task, got {distinct}; order examples with tunelab.data.plan.single_task_batches"
        )
    return distinct[0]
