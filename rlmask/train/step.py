"""The update machinery every agent's step uses: :class:`TrainStep` implements the agents' ``StepContext``.

One object per run. Before each batch the loop sets where training stands (``begin``); the agent runs
its forward passes under ``autocast()`` and calls ``update(loss, model=..., agent=...)`` once per update
it makes. ``update`` does what every update needs, in one order: zero_grad, backward outside autocast,
the agent's gradient all-reduce under torchrun (DDP does the classifier's), clipping of the classifier's
gradient, the optimiser steps. Learning-rate schedules step once per batch, in the loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rlmask import runtime
from rlmask.errors import UserError


class TrainStep:
    """The ``StepContext`` of one run: the model, the task's loss, the optimisers and the step's progress."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        optimizer: torch.optim.Optimizer,
        agent: nn.Module | None = None,
        agent_optimizer: torch.optim.Optimizer | None = None,
        *,
        device: torch.device,
        amp: bool = False,
        clip_grad: float = 0.0,
        total_steps: int = 0,
    ):
        self.model, self.loss_fn = model, loss_fn
        self.optimizer, self.agent, self.agent_optimizer = optimizer, agent, agent_optimizer
        self.device, self.amp, self.clip_grad = device, amp, clip_grad
        self.sync_agent_grads = runtime.world_size() > 1
        self.epoch = self.step = 0
        self.total_steps = total_steps
        self.updates = 0  # update() calls in this batch
        self.nonfinite: torch.Tensor | None = None  # on accelerators: has any loss been NaN or inf?

    def _check_finite(self, loss: torch.Tensor) -> None:
        """Stop a diverging run before a NaN or inf loss reaches the weights.

        On the CPU the check is free and runs before anything is stepped; on an accelerator a per-step
        host sync would stall the device, so the flag is kept there and read by ``raise_if_diverged``
        (the loop calls it before every checkpoint, so no checkpoint holds a diverged model).
        """
        bad = ~torch.isfinite(loss.detach()).all()
        if self.device.type == "cpu":
            if bad:
                self._diverged(float(loss.detach().float()))
        else:
            self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad

    def raise_if_diverged(self) -> None:
        if self.nonfinite is not None and bool(self.nonfinite):
            self._diverged(float("nan"))

    def _diverged(self, value: float) -> None:
        raise UserError(
            f"epoch {self.epoch + 1}, step {self.step + 1}: the training loss is {value} (not finite): "
            "the run diverged; lower --lr or set --clip-grad (checkpoints already written are kept)"
        )

    def begin(self, epoch: int, step: int) -> TrainStep:
        """Set where training stands before a batch (``step``: optimiser steps done so far)."""
        self.epoch, self.step, self.updates = epoch, step, 0
        return self

    @property
    def progress(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def loss(self, *inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        """The task's per-sample loss (B,) of the model being trained."""
        return self.loss_fn(self.model, *inputs, **kwargs)

    def update(self, loss: torch.Tensor, *, model: bool = True, agent: bool = True) -> None:
        """Backpropagate ``loss``; step the classifier's optimiser (``model``) and/or the agent's (``agent``)."""
        self._check_finite(loss)
        agent_opt = self.agent_optimizer if agent else None
        if model:
            self.optimizer.zero_grad(set_to_none=True)
        if agent_opt is not None:
            agent_opt.zero_grad(set_to_none=True)
        loss.backward()
        if agent_opt is not None and self.sync_agent_grads:
            for p in self.agent.parameters():
                if p.grad is not None:
                    runtime.all_reduce_mean_(p.grad)
        if model:
            if self.clip_grad > 0:
                params = [p for group in self.optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
            self.optimizer.step()
        if agent_opt is not None:
            agent_opt.step()
        self.updates += 1
