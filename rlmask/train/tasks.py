"""Tasks: what a run trains and how it is judged. The agent decides how a batch is used; the task owns

- the model built for a pool (``build_model``),
- the per-sample loss the agent's step minimises (``loss``),
- validation metrics, the one metric that picks ``best.pt`` and its direction (``best_metric``, ``maximize``),
- what the run exports for downstream use (``export``: ``heated.pt``).

``classify``: a classifier trained with cross-entropy on labels; ``heated.pt`` is the classifier
(timm key names), readable by ``finetune --init``, ``transfer`` and ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlmask.data import Augment, Split
from rlmask.errors import UserError
from rlmask.evaluate.inference import evaluate_split, predict_split
from rlmask.evaluate.metrics import SUMMARY_METRICS
from rlmask.io import save_checkpoint
from rlmask.models import create_model


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-sample cross-entropy (B,) in float32 (logits may come from bf16 autocast)."""
    return F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=label_smoothing)


class ClassifyTask:
    """A classifier over the pool's classes, trained with (label-smoothed) cross-entropy."""

    name = "classify"
    best_metric = "macro_f1"
    maximize = True
    summary_metrics = SUMMARY_METRICS

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def build_model(self, name: str, num_classes: int, in_chans: int, small_stem: bool) -> nn.Module:
        """A classifier ``name`` with ``num_classes`` outputs for ``in_chans``-channel images."""
        return create_model(name, num_classes, in_chans=in_chans, small_stem=small_stem)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample cross-entropy (B,) of ``model`` on images x (B, C, H, W) with labels y (B,)."""
        return cross_entropy(model(x), y, self.label_smoothing)

    def validate(self, model: nn.Module, split: Split, classes: list[str], transform: Augment,
                 view: Callable | None = None, **kwargs) -> dict:
        """Metrics of ``model`` on ``split`` (see ``classification_metrics``), under ``view`` if given."""
        return evaluate_split(model, split, classes, transform, mask_fn=view, **kwargs)

    def predict(self, model: nn.Module, split: Split, transform: Augment, **kwargs) -> dict[str, np.ndarray]:
        """What the run keeps of its final test predictions (predictions.npz): {"probs" (N, K), "labels" (N,)},
        for paired comparisons on the very same images."""
        probs, labels = predict_split(model, split, transform, **kwargs)
        return {"probs": probs.numpy().astype(np.float32), "labels": labels.numpy()}

    def export(self, model: nn.Module, out: Path) -> None:
        """heated.pt: the classifier alone, with timm's key names."""
        save_checkpoint(out / "heated.pt", model.state_dict())


TASKS = {"classify": ClassifyTask}


def build_task(name: str, label_smoothing: float = 0.0):
    """The task of ``name`` (an agent's registered task)."""
    if name not in TASKS:
        raise UserError(f"task {name}: unknown; choose from {', '.join(TASKS)}")
    return TASKS[name](label_smoothing=label_smoothing)
