"""The contract every masking agent fulfils to plug into the one training loop.

The loop moves data one way: batch on device -> augmentation -> ``agent.training_loss`` (the agent
masks the batch and runs the classifier) -> one backward -> every optimiser steps -> logs. The loop
owns the classifier's optimiser; an agent with parameters gets its own optimiser from
``agent.optimizer_options()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AgentOptimizer:
    """How the loop builds the agent's optimiser and schedule (ignored for agents without parameters)."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = "sgd"  # "sgd" | "adamw" | "adam"
    schedule: str = "cosine"  # "cosine" | "step" | "constant"


class MaskAgent(nn.Module):
    """Base class: a masking agent. The plain method is this class itself (no mask)."""

    name = "plain"

    def training_loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one training batch.

        x: (B, C, H, W) normalised images on the device; y: (B,) labels;
        criterion(logits, y) -> (B,) per-sample loss (label smoothing already applied).
        Returns the scalar whose single backward trains the classifier and the agent, and a dict of
        detached scalar tensors to log (grouped names such as ``losses/ce``, ``policy/mask_mean``).
        Tensors only: the loop never calls ``.item()`` inside a step.
        """
        loss = criterion(model(x), y).mean()
        return loss, {"losses/ce": loss.detach()}

    def optimizer_options(self) -> AgentOptimizer | None:
        """Options of this agent's optimiser, or None when it has no trainable parameters."""
        return None

    def masked_eval_input(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """x under the agent's input-independent mask for masked validation, or None if not applicable."""
        return None

    def resolved_config(self) -> dict:
        """Plain-data options of the agent as resolved for this run (recorded in config.json)."""
        return {"method": self.name}
