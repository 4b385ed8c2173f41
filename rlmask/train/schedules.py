"""Learning-rate schedules as pure functions of the step, and the LambdaLR that wraps them.

A schedule is a multiplier in [0, 1] of the optimiser's base learning rate. Keeping it a pure
function makes it testable point by point, and the LambdaLR state is then only ``last_epoch``,
which round-trips through a checkpoint for resume.
"""

from __future__ import annotations

import functools
import math

import torch

from rlmask.errors import UserError

SCHEDULES = ("cosine", "step", "constant", "multistep")


def lr_factor(
    step: int,
    total_steps: int,
    *,
    schedule: str,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
    step_size: int = 0,
    gamma: float = 0.1,
    min_factor: float = 0.0,
    milestones: tuple[int, ...] = (),
) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Warm-up rises linearly from ``warmup_start`` at step 0 to 1 at ``warmup_steps``. Then
    "cosine" falls along a half cosine to ``min_factor`` at ``total_steps`` (and stays there);
    "step" multiplies by ``gamma`` every ``step_size`` steps counted from step 0, like torch's StepLR,
    with the warm-up multiplied on top; "multistep" multiplies by ``gamma`` at each step of ``milestones``,
    like torch's MultiStepLR (Intelligent Masking's reference: epochs 100 and 200, gamma 0.33);
    "constant" stays at 1.
    """
    if schedule not in SCHEDULES:
        raise UserError(f"schedule: unknown {schedule!r} (choose one of {', '.join(SCHEDULES)})")
    if warmup_steps < 0 or not 0.0 <= warmup_start <= 1.0:
        raise UserError(
            f"warm-up: need warmup_steps >= 0 and 0 <= warmup_start <= 1, got {warmup_steps}, {warmup_start}"
        )
    if not 0.0 <= min_factor <= 1.0:
        raise UserError(f"min_factor: must lie in [0, 1], got {min_factor}")
    if schedule == "step" and (step_size < 1 or not 0.0 <= gamma <= 1.0):
        raise UserError(f"step schedule: need step_size >= 1 and 0 <= gamma <= 1, got {step_size}, {gamma}")

    warmup = warmup_start + (1.0 - warmup_start) * step / warmup_steps if step < warmup_steps else 1.0
    if schedule == "step":
        return warmup * gamma ** (step // step_size)
    if schedule == "multistep":
        return warmup * gamma ** sum(step >= m for m in milestones)
    if schedule == "constant" or step < warmup_steps:
        return warmup
    decay_steps = total_steps - warmup_steps
    progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, **options) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying :func:`lr_factor` (same keyword options) to every parameter group.

    Call ``scheduler.step()`` once per optimiser step. The multiplier is a ``functools.partial`` of a
    module-level function, so ``state_dict()`` holds plain data and ``load_state_dict`` resumes it.
    """
    factor = functools.partial(lr_factor, total_steps=total_steps, **options)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
