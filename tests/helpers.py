"""Helpers shared by test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import torch


def descend(model, batch, steps: int = 10, lr: float = 1e-2) -> list[float]:
    """Full-batch AdamW steps on the trainable weights; the losses seen (dropout off, so the descent is deterministic)."""
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.eval()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        losses.append(loss.item())
    return losses
