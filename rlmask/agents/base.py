"""The contract every masking agent fulfils to plug into the one training loop.

The loop owns optimisers, bf16 autocast, the gradient all-reduce, clipping, schedules, checkpoints and
logs; the *task* (``rlmask.train.tasks``) owns the model, its per-sample loss, validation and what is
exported; the *agent* owns the order of its updates within a batch. For every training batch the loop
calls ``agent.train_step(ctx, x, y)`` with a :class:`StepContext`:

- ``ctx.model``: the network being trained (wrapped by DDP / torch.compile where they apply);
- ``ctx.loss(*inputs)``: the task's per-sample loss (B,) of ``ctx.model`` on ``inputs`` (for the
  classify task: images and labels);
- ``ctx.autocast()``: the run's autocast context, for forward passes;
- ``ctx.update(loss, model=True, agent=True)``: zero_grad, one backward (outside autocast), the agent's
  gradient all-reduce under torchrun, clipping, and a step of the chosen optimisers;
- ``ctx.epoch``, ``ctx.step``, ``ctx.total_steps``, ``ctx.progress``: where training stands.

Plain training and PGNM call ``update`` once per batch, APGA three times, Intelligent Masking twice.
An agent whose whole step is one loss only overrides :meth:`MaskAgent.training_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from rlmask.agents.augment import AUGMENTS, check_augment
from rlmask.config import option
from rlmask.errors import UserError

MASK_SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class AgentCommon:
    """Options every registered agent has: its options dataclass derives from this one."""

    augment: str = option(
        "none",
        "batch augmentation of every training batch before the agent's step: " + ", ".join(AUGMENTS),
        choices=list(AUGMENTS),
    )

    mask_schedule: str = option(
        "constant",
        "strength of the agent's masking over training: constant, or annealed from full to none by the end: "
        "linear, cosine (masks, noise and erasures are blended with the clean image by the strength)",
        choices=list(MASK_SCHEDULES),
    )

    def validate_common(self) -> None:
        check_augment(self.augment)
        if self.mask_schedule not in MASK_SCHEDULES:
            raise UserError(f"--mask-schedule {self.mask_schedule}: choose from {', '.join(MASK_SCHEDULES)}")


def mask_strength(schedule: str, progress: float) -> float:
    """The masking strength in [0, 1] at ``progress`` (fraction of training done): 1 throughout (constant), or
    annealed from 1 to 0: linearly, or along a half cosine."""
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def blend(x: torch.Tensor, x_masked: torch.Tensor, strength: float) -> torch.Tensor:
    """``x + strength (x_masked - x)``: the masked input at partial strength (``x_masked`` itself at 1)."""
    return x_masked if strength >= 1.0 else x + strength * (x_masked - x)


def soften(keep: torch.Tensor, strength: float) -> torch.Tensor:
    """Keep-weights in [0, 1] at partial strength: ``1 - strength (1 - keep)`` (``keep`` itself at 1)."""
    return keep if strength >= 1.0 else 1.0 - strength * (1.0 - keep)


@dataclass
class AgentOptimizer:
    """How the loop builds the agent's optimiser and schedule (ignored for agents without parameters)."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = "sgd"  # "sgd" | "adamw" | "adam"
    schedule: str = "cosine"  # "cosine" | "step" | "constant"


@dataclass
class EvalView:
    """An evaluation view of a validation batch: ``fn(x, generator)`` gives the input the model sees, or a
    list of inputs whose softmax outputs are averaged (test-time augmentation). ``final``: also scored on
    the validation and test splits at the end of the run (metrics.json ``val_NAME`` / ``test_NAME``)."""

    fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor | list[torch.Tensor]]
    final: bool = False


class StepContext(Protocol):
    """What the loop hands ``MaskAgent.train_step`` for one batch (implemented in ``rlmask.train.step``)."""

    model: nn.Module
    epoch: int  # epoch in progress, from 0
    step: int  # optimiser steps done before this batch
    total_steps: int

    @property
    def progress(self) -> float:
        """Fraction of training done before this batch, in [0, 1)."""

    def autocast(self): ...

    def loss(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        """The task's per-sample loss (B,) of ``model`` on ``inputs``."""

    def update(self, loss: torch.Tensor, *, model: bool = True, agent: bool = True) -> None:
        """Backpropagate ``loss`` and step the classifier's (``model``) and/or the agent's optimiser."""


class MaskAgent(nn.Module):
    """Base class of masking agents. Itself the plain method: no mask, one update per batch."""

    name = "plain"
    augment = "none"  # the batch augmentation the loop applies before train_step (AgentCommon.augment)
    mask_schedule = "constant"  # AgentCommon.mask_schedule
    strength = 1.0  # the masking strength of the step in progress (set at the start of train_step)

    def __init__(self, cfg: AgentCommon | None = None, image_size: int = 0, in_chans: int = 0, seed: int = 0):
        super().__init__()

    def train_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training batch: x (B, C, H, W) normalised images on the device, y (B,) targets.

        Returns detached scalar tensors to log, with grouped names (``losses/ce``, ``policy/mask_mean``);
        tensors only, so the loop never waits for the device inside a step. The default runs
        :meth:`training_loss` under autocast and makes one update of every network.
        """
        self.strength = self.mask_strength(ctx)
        with ctx.autocast():
            loss, logs = self.training_loss(x, y, ctx.loss)
        ctx.update(loss)
        return logs

    def mask_strength(self, ctx: StepContext) -> float:
        """The strength of this step's masking from ``mask_schedule`` and ``ctx.progress``."""
        return mask_strength(self.mask_schedule, ctx.progress)

    def training_loss(
        self, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable[..., torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scalar whose one backward trains the classifier and the agent, and the logs.

        ``loss_fn(x, y)`` is the task's per-sample loss (B,) of the model being trained (``ctx.loss``).
        """
        loss = loss_fn(x, y).mean()
        return loss, {"losses/ce": loss.detach()}

    @staticmethod
    def task_options(options) -> dict:
        """Keyword options of this agent's task taken from the agent's options dataclass (``build_task``);
        none by default. They let one method's flags configure its task without a field in TrainConfig."""
        return {}

    def write_figures(self, model: nn.Module, x: torch.Tensor, out, mean: float, std: float) -> None:
        """At the end of a pretraining run: figures of the agent at work on validation images x (B, C, H, W)
        (normalised with ``mean``, ``std``) with the trained ``model``, written into folder ``out``."""

    def optimizer_options(self) -> AgentOptimizer | None:
        """Options of this agent's optimiser, or None when it has no trainable parameters."""
        return None

    def eval_views(self) -> dict[str, EvalView]:
        """Extra views scored at validation (logged as ``val_NAME/...``), e.g. PGNM's base mask."""
        return {}

    @torch.no_grad()
    def sample_masks(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor] | None:
        """For the mask gallery: named (B, 1 or C, H, W) tensors for x (``mask`` in [0, 1], the agent's
        keep-weights; other keys are extra rows), drawn from ``generator``; None without masks."""
        return None

    def resolved_config(self) -> dict:
        """Plain-data options of the agent as resolved for this run (recorded in config.json)."""
        return {"method": self.name}
