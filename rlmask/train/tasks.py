"""Tasks: what a run trains and how it is judged. The agent decides how a batch is used; the task owns

- the model built for a pool (``build_model``),
- the per-sample loss the agent's step minimises (``loss``),
- validation metrics, the one metric that picks ``best.pt`` and its direction (``best_metric``, ``maximize``),
- what the run exports for downstream use (``export``: ``heated.pt``).

``classify``: a classifier trained with cross-entropy on labels; ``heated.pt`` is the classifier
(timm key names), readable by ``finetune --init``, ``transfer`` and ``evaluate``.

``reconstruct``: a U-Net (``Reconstructor``) whose encoder is a registered backbone inpaints hidden blocks,
no labels used; ``heated.pt`` is the encoder alone, a backbone state dict read like a classifier's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlmask.data import DEFAULT_MEAN, DEFAULT_STD, Augment, BatchLoader, Split
from rlmask.errors import UserError
from rlmask.evaluate.inference import evaluate_split, predict_split
from rlmask.evaluate.metrics import SUMMARY_METRICS, classification_metrics
from rlmask.io import save_checkpoint
from rlmask.masks import block_mask
from rlmask.models import Reconstructor, create_model


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

    def validate(
        self,
        model: nn.Module,
        split: Split,
        classes: list[str],
        transform: Augment,
        view: Callable | None = None,
        **kwargs,
    ) -> dict:
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


# ---------------------------------------------------------------------------------------------
# reconstruct (<<< Intelligent Masking, issue 12)
# ---------------------------------------------------------------------------------------------
SCALINGS = {"rlmask": (DEFAULT_MEAN, DEFAULT_STD), "reference": (0.5, 0.5)}  # reference: [0, 1] -> [-1, 1]


def masked_squared_error(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) squared error over the hidden pixels divided by the hidden area (pixels x channels)
    in float32; ``hidden`` (B, 1, H, W) is 1 where the input was hidden."""
    err = (pred.float() - target.float()).square() * hidden  # (B, C, H, W)
    area = hidden.sum((1, 2, 3)) * pred.shape[1]  # (B,)
    return err.sum((1, 2, 3)) / area.clamp_min(1.0)


def fixed_block_corners(n: int, grid: int, block: int, seed: int) -> torch.Tensor:
    """(n, 2) top-left cells of the validation blocks of a split of ``n`` images: uniform over the
    (grid - block + 1)^2 positions, drawn from ``seed`` alone, so equal for every epoch, run and method."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, grid - block + 1, (n, 2), generator=g)


class ReconstructTask:
    """Inpainting: a U-Net on a registered backbone reconstructs the hidden block of each image.

    Options (the ``context`` agent's, passed through ``MaskAgent.task_options``): ``scaling`` of the inputs
    (``rlmask``: the normalisation every rlmask run uses; ``reference``: [-1, 1] as the reference);
    validation hides one ``val_block`` x ``val_block`` block of a ``grid`` x ``grid`` partition per image
    at positions fixed by ``val_seed``; ``probe``: also a linear probe (logistic regression on the pooled
    encoder features of at most ``probe_images`` training images) scored on the validation labels.
    """

    name = "reconstruct"
    best_metric = "rec_error"
    maximize = False
    summary_metrics = ("rec_error", "rec_error_image", "probe_macro_f1")  # an instance lists the probe's if on

    def __init__(
        self,
        label_smoothing: float = 0.0,
        scaling: str = "rlmask",
        grid: int = 9,
        val_block: int = 3,
        val_seed: int = 0,
        probe: bool = False,
        probe_images: int = 2000,
    ):
        if scaling not in SCALINGS:
            raise UserError(f"--scaling {scaling}: choose from {', '.join(SCALINGS)}")
        if not 1 <= val_block <= grid:
            raise UserError(f"--val-block {val_block}: must be in [1, grid={grid}]")
        self.scaling, self.grid, self.val_block, self.val_seed = scaling, grid, val_block, val_seed
        self.probe, self.probe_images = probe, probe_images
        self.normalisation = SCALINGS[scaling]  # (mean, std) the loop normalises the images with
        self.summary_metrics = ("rec_error", "rec_error_image") + (("probe_macro_f1",) if probe else ())
        self.wants_train_split = probe  # the loop then passes ``train=`` to ``validate``

    def build_model(self, name: str, num_classes: int, in_chans: int, small_stem: bool) -> nn.Module:
        """A ``Reconstructor`` on the backbone ``name`` (its head dropped); ``num_classes`` is not used."""
        if name.startswith("timm:"):
            raise UserError(f"--model {name}: the reconstruct task needs a built-in backbone (see `rlmask models`)")
        return Reconstructor(create_model(name, 0, in_chans=in_chans, small_stem=small_stem), in_chans)

    def loss(
        self,
        model: nn.Module,
        x_masked: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        out: dict | None = None,
    ) -> torch.Tensor:
        """Per-sample (B,) squared error of ``model(x_masked)`` against ``target`` on the hidden pixels
        (``mask`` (B, 1, H, W): 1 = hidden) divided by the hidden area. ``out``, when given, receives the
        reconstruction (``out["reconstruction"]``, (B, C, H, W), still in the graph)."""
        pred = model(x_masked)
        if out is not None:
            out["reconstruction"] = pred
        return masked_squared_error(pred, target, mask)

    @torch.no_grad()
    def validate(
        self,
        model: nn.Module,
        split: Split,
        classes: list[str],
        transform: Augment,
        view: Callable | None = None,
        *,
        batch_size: int = 256,
        device: torch.device | str = "cpu",
        amp: bool = False,
        progress: str | None = None,
        num_workers: int = 0,
        train: Split | None = None,
    ) -> dict:
        """``rec_error``: mean over ``split`` of the hidden-block error on the fixed validation blocks;
        ``rec_error_image``: the whole-image mean squared error of the same reconstructions; with ``probe``
        and a ``train`` split, ``probe_macro_f1``. ``view`` (a classification view) does not apply."""
        device = torch.device(device)
        was_training = model.training
        model.eval()
        corners = fixed_block_corners(len(split), self.grid, self.val_block, self.val_seed)  # (N, 2)
        loader = BatchLoader(
            split, batch_size, shuffle=False, seed=0, drop_last=False, device=device, num_workers=num_workers
        )
        masked, whole, start = [], [], 0
        for x_u8, _ in loader.epoch(0):
            x = transform(x_u8, None)  # (B, C, S, S)
            hidden = block_mask(corners[start : start + len(x)].to(device), self.val_block, self.grid, x.shape[-2:])
            start += len(x)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                pred = model(x * (1 - hidden))
            masked.append(masked_squared_error(pred, x, hidden).cpu())
            whole.append((pred.float() - x).square().mean((1, 2, 3)).cpu())
        model.train(was_training)
        metrics = {
            "rec_error": torch.cat(masked).mean().item(),
            "rec_error_image": torch.cat(whole).mean().item(),
            "val_block": self.val_block,
            "grid": self.grid,
            "n": len(split),
        }
        if self.probe and train is not None:
            metrics["probe_macro_f1"] = self.probe_score(model, train, split, classes, transform, device, batch_size)
        return metrics

    def probe_score(
        self,
        model: nn.Module,
        train: Split,
        split: Split,
        classes: list[str],
        transform: Augment,
        device: torch.device,
        batch_size: int,
    ) -> float:
        """Macro-F1 on ``split`` of a logistic regression on the frozen encoder's pooled features."""
        from sklearn.linear_model import LogisticRegression

        index = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.val_seed))[: self.probe_images]
        feats = [
            _pooled_features(model.encoder, s, transform, device, batch_size)
            for s in (train.subset(index.sort().values), split)
        ]
        mean, std = feats[0].mean(0), feats[0].std(0).clamp_min(1e-6)
        head = LogisticRegression(max_iter=500).fit(
            ((feats[0] - mean) / std).numpy(), train.labels[index.sort().values].numpy()
        )
        probs = head.predict_proba(((feats[1] - mean) / std).numpy())
        full = torch.zeros(len(split), len(classes), dtype=torch.float64)
        full[:, torch.as_tensor(head.classes_)] = torch.as_tensor(
            probs, dtype=torch.float64
        )  # classes absent from the subset: 0
        return classification_metrics(full.numpy(), split.labels.numpy(), classes)["macro_f1"]

    def export(self, model: nn.Module, out: Path) -> None:
        """heated.pt: the encoder alone, a state dict of the registered backbone (no head); the decoder,
        saved in last.pt, is dropped."""
        save_checkpoint(out / "heated.pt", model.encoder.state_dict())


@torch.no_grad()
def _pooled_features(
    encoder: nn.Module, split: Split, transform: Augment, device: torch.device, batch_size: int
) -> torch.Tensor:
    was_training = encoder.training
    encoder.eval()
    loader = BatchLoader(split, batch_size, shuffle=False, seed=0, drop_last=False, device=device)
    out = [
        encoder.forward_head(encoder.forward_features(transform(x_u8, None)), pre_logits=True).float().cpu()
        for x_u8, _ in loader.epoch(0)
    ]
    encoder.train(was_training)
    return torch.cat(out)  # (N, D)


# >>> reconstruct


TASKS = {"classify": ClassifyTask, "reconstruct": ReconstructTask}


def build_task(name: str, label_smoothing: float = 0.0, **options):
    """The task of ``name`` (an agent's registered task), with the options its agent gives it."""
    if name not in TASKS:
        raise UserError(f"task {name}: unknown; choose from {', '.join(TASKS)}")
    return TASKS[name](label_smoothing=label_smoothing, **options)
