"""A shared encoder with one classification head per task, for multi-task fine-tuning.

One `AutoModel` encoder runs once over a batch that may mix tasks; each
example's pooled representation (the pooler output when the encoder has a
pooler, else the first token's hidden state) goes to its own task's head,
``dropout -> Linear(hidden, num_labels)``.

Every head runs on every batch, on the (possibly empty) set of rows of its
task. A head whose task is absent then gets a zero gradient rather than none,
so distributed training never sees an unused parameter.

Output shape, chosen for `transformers.Trainer`: heads have different label
counts, and the Trainer can only gather and concatenate one tensor per output
across batches. So `logits` is one ``[batch, max_num_labels]`` tensor in which
row i holds its own head's logits, padded with ``-inf`` in the label slots its
task does not have (``argmax`` and ``softmax`` stay correct on a padded row).
`MultiHeadClassifier.by_task` cuts a padded batch back into per-task logits.

Saved layout (`save` / `load`)::

    encoder/             the encoder, `save_pretrained` (safetensors + config)
    heads.safetensors    TASK.weight, TASK.bias for each task
    multihead.json       {"tasks": {task: [labels in id order]}, "dropout": p, "hidden_size": h}
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import ModelOutput

from tunelab.errors import TunelabError

ENCODER_DIR = "encoder"
HEADS_FILE = "heads.safetensors"
SETTINGS_FILE = "multihead.json"


class MultiHeadError(TunelabError, ValueError):
    """A multi-head model asked for something it cannot do, with what to do instead."""


@dataclass
class MultiHeadOutput(ModelOutput):
    """`loss`: weighted mean cross-entropy (None without labels); `logits`: ``[batch, max_num_labels]``, -inf padded."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def _seeded_head(
    hidden_size: int, num_labels: int, dropout: float, std: float, generator: torch.Generator
) -> nn.Sequential:
    """A head drawn only from `generator`: built on the meta device so the global RNG is neither used nor advanced."""
    linear = nn.Linear(hidden_size, num_labels, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        linear.weight.normal_(0.0, std, generator=generator)
        linear.bias.zero_()
    return nn.Sequential(nn.Dropout(dropout), linear)


def _weighted_mean(per_example: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """sum(w_i * ce_i) / sum(w_i); all-zero weights give a loss of 0 (and zero gradients) instead of NaN."""
    if weights is None:
        return per_example.mean()
    weights = weights.to(per_example)
    return (weights * per_example).sum() / weights.sum().clamp_min(torch.finfo(per_example.dtype).tiny)


class MultiHeadClassifier(nn.Module):
    """Shared encoder + one ``dropout -> Linear(hidden, num_labels)`` head per task, trained jointly.

    Task id = index in `task_names`, which keeps the order of the `tasks` dict.
    Heads are initialised like the encoder's own linear layers (normal, std =
    `initializer_range`, zero bias) from a generator seeded with `seed`, so two
    builds from the same encoder are identical whatever the global RNG state.
    """

    def __init__(self, encoder: PreTrainedModel, tasks: dict[str, list[str]], dropout: float = 0.1, seed: int = 0):
        super().__init__()
        if not tasks:
            raise ValueError("a multi-head classifier needs at least one task")
        for task, labels in tasks.items():
            if len(labels) < 2:
                raise ValueError(f"task '{task}' needs at least 2 labels, got {labels}")
        self.encoder = encoder
        self.config = encoder.config  # the Trainer reads and sets a few config fields (e.g. use_cache)
        self.tasks = {task: list(labels) for task, labels in tasks.items()}
        self.task_names = list(self.tasks)
        self.dropout = dropout
        generator = torch.Generator().manual_seed(seed)
        std = getattr(encoder.config, "initializer_range", 0.02)
        hidden_size = encoder.config.hidden_size
        # A ModuleList, not a ModuleDict: task names like "eval" or "keys" would clash with module attributes.
        self.heads = nn.ModuleList(
            _seeded_head(hidden_size, len(labels), dropout, std, generator) for labels in self.tasks.values()
        ).to(device=encoder.device, dtype=encoder.dtype)

    def _pooled(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        """One vector per example: the pooler output if the encoder has a pooler, else the first token's state."""
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}  # not every encoder takes them
        outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra)
        pooled = getattr(outputs, "pooler_output", None)
        return pooled if pooled is not None else outputs.last_hidden_state[:, 0]

    def _task_index(self, task: str) -> int:
        if task not in self.tasks:
            raise KeyError(f"unknown task '{task}'; tasks: {', '.join(self.task_names)}")
        return self.task_names.index(task)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        task_ids: torch.LongTensor,
        labels: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        loss_weights: torch.FloatTensor | None = None,
    ) -> MultiHeadOutput:
        """Encode the whole batch once, then apply each task's head to its own rows only.

        `labels[i]` is an id into task `task_ids[i]`'s labels. `loss_weights[i]`
        (default 1) weighs example i in the loss, sum(w_i * ce_i) / sum(w_i):
        per-task loss weights are ``task_weight_tensor[task_ids]``.
        """
        if task_ids.numel() and (task_ids.min() < 0 or task_ids.max() >= len(self.heads)):
            raise ValueError(f"task_ids must lie in [0, {len(self.heads)}), got {task_ids.tolist()}")
        pooled = self._pooled(input_ids, attention_mask, token_type_ids)
        rows = [(task_ids == index).nonzero(as_tuple=True)[0] for index in range(len(self.heads))]
        head_logits = [head(pooled[task_rows]) for head, task_rows in zip(self.heads, rows)]
        # Heads' rows were taken task by task; this permutation puts every row back in batch order.
        to_batch_order = torch.cat(rows).argsort()
        width = max(logits.shape[-1] for logits in head_logits)
        padded = torch.cat(
            [F.pad(logits, (0, width - logits.shape[-1]), value=float("-inf")) for logits in head_logits]
        )
        loss = None
        if labels is not None:
            per_example = torch.cat(
                [
                    F.cross_entropy(logits.float(), labels[task_rows], reduction="none")
                    for logits, task_rows in zip(head_logits, rows)
                ]
            )[to_batch_order]
            loss = _weighted_mean(per_example, loss_weights)
        return MultiHeadOutput(loss=loss, logits=padded[to_batch_order])

    def predict(self, input_ids, attention_mask, task: str, token_type_ids=None) -> torch.Tensor:
        """Logits ``[batch, len(labels of task)]`` of one task's head for a single-task batch (no padding).

        Runs in whatever mode the model is in: call `eval()` and wrap in
        `torch.no_grad()` for inference.
        """
        head = self.heads[self._task_index(task)]
        return head(self._pooled(input_ids, attention_mask, token_type_ids))

    def by_task(self, logits, task_ids) -> dict[str, tuple]:
        """Cut padded logits (tensors, or the numpy arrays `compute_metrics` gets) into per-task pieces.

        Returns {task: (row mask, logits of those rows trimmed to the task's labels)}
        for the tasks present, so metrics can be computed per task.
        """
        pieces = {}
        for index, (task, labels) in enumerate(self.tasks.items()):
            mask = task_ids == index
            if mask.any():
                pieces[task] = (mask, logits[mask][:, : len(labels)])
        return pieces

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs=None, every_n_layers: int = 1, offload: bool = False
    ):
        """Checkpoint the encoder's layers: the Trainer calls this for `activation_checkpointing` / `gradient_checkpointing`."""
        self.encoder.activation_checkpointing_enable(
            activation_checkpointing_kwargs=activation_checkpointing_kwargs,
            every_n_layers=every_n_layers,
            offload=offload,
        )

    @torch.no_grad()
    def as_classifier(self, task: str) -> PreTrainedModel:
        """The shared encoder with one task's head as a standalone transformers sequence classifier, the model
        `tunelab merge RUN --task NAME` writes; checked to give this model's logits for that task."""
        labels = self.tasks[self.task_names[self._task_index(task)]]
        config = copy.deepcopy(self.encoder.config)
        config.num_labels, config.id2label = len(labels), dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        classifier = AutoModelForSequenceClassification.from_config(config).to(self.encoder.device).eval()
        getattr(classifier, classifier.base_model_prefix).load_state_dict(self.encoder.state_dict())
        head, linear = self.heads[self._task_index(task)][1], getattr(classifier, "classifier", None)
        if not isinstance(linear, nn.Linear) or linear.weight.shape != head.weight.shape:
            raise MultiHeadError(
                f"{type(classifier).__name__} does not put one linear layer on the pooled encoding, as "
                "the multi-head model does, so a head cannot be exported as it; use the run directly"
            )
        linear.load_state_dict(head.state_dict())
        probe = torch.randint(0, config.vocab_size, (2, 8), device=self.encoder.device)
        mask = torch.ones_like(probe)
        was_training = self.training
        self.eval()
        same = torch.allclose(
            classifier(input_ids=probe, attention_mask=mask).logits, self.predict(probe, mask, task), atol=1e-5
        )
        self.train(was_training)
        if not same:
            raise MultiHeadError(
                f"{type(classifier).__name__} pools the encoding differently from the multi-head model, "
                "so a head cannot be exported as it; use the run directly"
            )
        return classifier

    def _head_parameters(self) -> dict[str, nn.Parameter]:
        """Head parameters under portable names, TASK.weight and TASK.bias: the keys of heads.safetensors."""
        return {
            f"{task}.{name}": parameter
            for task, head in zip(self.task_names, self.heads)
            for name, parameter in head[1].named_parameters()
        }

    def save(self, directory: Path) -> None:
        """Write the encoder, the heads and the task settings so that `load` rebuilds this exact model."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory / ENCODER_DIR)
        heads = {name: p.detach().cpu().contiguous() for name, p in self._head_parameters().items()}
        save_file(heads, directory / HEADS_FILE)
        settings = {"tasks": self.tasks, "dropout": self.dropout, "hidden_size": self.config.hidden_size}
        (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> MultiHeadClassifier:
        """Rebuild a model written by `save` (fp32, on the CPU)."""
        directory = Path(directory)
        settings = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
        model = cls(_load_encoder(str(directory / ENCODER_DIR)), settings["tasks"], dropout=settings["dropout"])
        stored = load_file(directory / HEADS_FILE)
        parameters = model._head_parameters()
        if stored.keys() != parameters.keys():
            raise ValueError(f"{directory / HEADS_FILE} holds {sorted(stored)}, expected {sorted(parameters)}")
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(stored[name])
        return model


def _load_encoder(source: str) -> PreTrainedModel:
    """The bare encoder in fp32, as tunelab loads every model (mixed precision is the trainer's job)."""
    return AutoModel.from_pretrained(source, dtype=torch.float32)


def head_dropout(config) -> float:
    """The dropout before each head: what the encoder's own classification head would use (its
    classifier_dropout, else its hidden dropout), 0.1 for an encoder that names neither."""
    for name in ("classifier_dropout", "hidden_dropout_prob", "dropout"):
        value = getattr(config, name, None)
        if value is not None:
            return float(value)
    return 0.1


def build_multihead(source: str, tasks: dict[str, list[str]], seed: int = 0) -> MultiHeadClassifier:
    """A pretrained encoder (local directory or hub id) with fresh seeded heads for `tasks`."""
    encoder = _load_encoder(source)
    return MultiHeadClassifier(encoder, tasks, dropout=head_dropout(encoder.config), seed=seed)
