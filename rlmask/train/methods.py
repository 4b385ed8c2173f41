"""Pretraining with a masking agent (``rlmask pretrain``) and fine-tuning on clean images (``rlmask finetune``).

Pretraining is the one loop of ``loop.py`` with the agent of ``--method``; its classifier is the
*heated* model. Fine-tuning is the same loop with the plain agent, started from ``--init`` and with
the reference's fine-tuning schedule as defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlmask.agents import METHODS, NoiseConfig, build_agent
from rlmask.config import option, to_plain
from rlmask.errors import UserError
from rlmask.train.checkpoint import save_checkpoint
from rlmask.train.loop import TrainConfig, fit


@dataclass
class PretrainConfig(TrainConfig):
    """Options of ``rlmask pretrain``: ``rlmask train``'s, the method and the agent's."""

    method: str = option("pgnm", "masking method", choices=list(METHODS))
    out: str = option("runs/pretrain", "output directory", metavar="DIR")
    agent: NoiseConfig = field(default_factory=NoiseConfig)


@dataclass
class FinetuneConfig(TrainConfig):
    """Options of ``rlmask finetune``; defaults are the reference's fine-tuning schedule."""

    epochs: int = option(10, "fine-tuning epochs")
    lr: float = option(1e-3, "peak learning rate")
    schedule: str = option("step", "learning-rate schedule after warm-up", choices=["cosine", "step", "constant"])
    warmup_epochs: float = option(7.0, "linear warm-up length in epochs")
    warmup_start: float = option(0.01, "learning-rate factor at the start of warm-up")
    out: str = option("runs/finetune", "output directory", metavar="DIR")


def _save_heated(model: torch.nn.Module, agent: torch.nn.Module, out: Path) -> None:
    """heated.pt: the classifier alone (timm key names); policy.pt: the agent's state."""
    save_checkpoint(out / "heated.pt", model.state_dict())
    if agent.state_dict():
        save_checkpoint(out / "policy.pt", {"agent": agent.state_dict(), "config": agent.resolved_config()})


def pretrain(cfg: PretrainConfig) -> dict:
    """Pretrain with the agent of ``cfg.method``; writes heated.pt and policy.pt beside the loop's files."""
    cfg.agent.validate()
    options = to_plain(cfg.agent)

    def make_agent(pool):
        return build_agent(cfg.method, pool.image_size, pool.channels, seed=cfg.seed, **options)

    return fit(cfg, make_agent, extra_config={"method": cfg.method}, on_finish=_save_heated)


def finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune ``cfg.init`` (heated.pt, an rlmask checkpoint or a timm state dict) on clean images."""
    if not cfg.init and not cfg.resume:
        raise UserError("--init: required (the heated model to fine-tune, e.g. DIR/heated.pt)")
    return fit(cfg, extra_config={"method": "finetune"})
