"""Pretraining with a masking agent (``rlmask pretrain``) and fine-tuning on clean images (``rlmask finetune``).

Pretraining is the one loop of ``loop.py`` with the agent of ``--method`` (any registered agent, with its
own options in ``PretrainConfig.agent``) on that agent's task; its exported model is the *heated* model.
Fine-tuning is the same loop with the plain agent, started from ``--init`` and with the reference's
fine-tuning schedule as defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from rlmask.agents import AGENTS, get_agent
from rlmask.config import option
from rlmask.errors import UserError
from rlmask.io import save_checkpoint, to_plain
from rlmask.train.loop import Run, TrainConfig, fit


@dataclass
class PretrainConfig(TrainConfig):
    """Options of ``rlmask pretrain``: ``rlmask train``'s, the method and the agent's own options."""

    method: str = option("pgnm", "masking method (a registered agent; its options follow it)", choices=list(AGENTS))
    out: str = option("runs/pretrain", "output directory", metavar="DIR")
    # The agent's own options as plain data ({name: value}); on the command line they are the flags of
    # the agent named by --method, checked against its options dataclass.
    agent: dict = field(default_factory=dict, metadata={"cli": False, "help": "options of the agent"})


@dataclass
class FinetuneConfig(TrainConfig):
    """Options of ``rlmask finetune``; defaults are the reference's fine-tuning schedule."""

    epochs: int = option(10, "fine-tuning epochs")
    lr: float = option(1e-3, "peak learning rate")
    schedule: str = option("step", "learning-rate schedule after warm-up", choices=["cosine", "step", "constant"])
    warmup_epochs: float = option(7.0, "linear warm-up length in epochs")
    warmup_start: float = option(0.01, "learning-rate factor at the start of warm-up")
    out: str = option("runs/finetune", "output directory", metavar="DIR")


FIGURE_IMAGES = 8  # validation images in the agent's end-of-run figures


def export_heated(run: Run) -> None:
    """heated.pt: what the task exports (the classifier for classify, the encoder for reconstruct);
    policy.pt: the agent's state; the agent's own figures of a few validation images (``write_figures``)."""
    run.task.export(run.model, run.out)
    if run.agent.state_dict():
        save_checkpoint(run.out / "policy.pt", {"agent": run.agent.state_dict(), "config": run.agent.resolved_config()})
    val = run.pool.splits["val"]
    index = torch.linspace(0, len(val) - 1, min(FIGURE_IMAGES, len(val))).long()
    x = run.eval_aug(val.load(index).to(run.device), None)  # (n, C, S, S) normalised
    run.agent.write_figures(run.model, x, run.out, run.eval_aug.mean, run.eval_aug.std)


def pretrain(cfg: PretrainConfig) -> dict:
    """Pretrain with the agent of ``cfg.method``; writes heated.pt and policy.pt beside the loop's files."""
    spec = get_agent(cfg.method)
    options = spec.make_options(cfg.agent)  # a bad option fails here, before any work
    cfg = dataclasses.replace(cfg, agent=to_plain(options) if options is not None else {})  # all, resolved

    def make_agent(pool):
        return spec.build(pool.image_size, pool.channels, seed=cfg.seed, options=cfg.agent)

    extra = {"method": cfg.method, "task": spec.task}
    # The agent's options that configure its task (reconstruct's scaling and validation blocks): no TrainConfig field.
    task_options = spec.cls.task_options(options) if options is not None else {}
    return fit(cfg, make_agent, task=spec.task, extra_config=extra, on_finish=export_heated, task_options=task_options)


def finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune ``cfg.init`` (heated.pt, an rlmask checkpoint or a timm state dict) on clean images."""
    if not cfg.init and not cfg.resume:
        raise UserError("--init: required (the heated model to fine-tune, e.g. DIR/heated.pt)")
    return fit(cfg, extra_config={"method": "finetune"})
