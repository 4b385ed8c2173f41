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
from tqdm import tqdm

from rlmask.agents import get_agent
from rlmask.agents.noise import BARELY_MOVED, MOVED
from rlmask.config import option
from rlmask.data import BatchLoader
from rlmask.errors import UserError
from rlmask.io import read_jsonl, save_checkpoint, to_plain, write_json
from rlmask.models.weights import init_architecture
from rlmask.train.loop import Run, TrainConfig, figure_images, fit


@dataclass
class PretrainConfig(TrainConfig):
    """Options of ``rlmask pretrain``: ``rlmask train``'s, the method and the agent's own options."""

    method: str = option(
        "pgnm", "masking method (a registered agent; its options follow it)"
    )  # checked against the registry when run
    out: str = option("runs/pretrain", "output directory", metavar="DIR")
    # The agent's own options as plain data ({name: value}); on the command line they are the flags of
    # the agent named by --method, checked against its options dataclass.
    agent: dict = field(default_factory=dict, metadata={"cli": False, "help": "options of the agent"})


FINETUNE_WARMUP = 0.7  # the reference fine-tune warms up over 7 of its 10 epochs


@dataclass
class FinetuneConfig(TrainConfig):
    """Options of ``rlmask finetune``; defaults are the reference's fine-tuning schedule."""

    model: str | None = option(
        None,
        "classifier (default: the --init checkpoint's architecture, from the checkpoint or the config.json beside it)",
    )
    epochs: int = option(10, "fine-tuning epochs")
    lr: float = option(1e-3, "peak learning rate")
    schedule: str = option(
        "constant",
        "learning-rate schedule after warm-up; constant holds the peak lr, as the reference's 10 epochs do (its "
        "StepLR(30) never steps): a step every --step-size epochs would cut a longer fine-tuning's lr mid warm-up",
        choices=["cosine", "step", "constant"],
    )
    warmup_epochs: float | None = option(
        None, "linear warm-up length in epochs (default: 0.7 of --epochs, the reference's 7 of 10)"
    )
    warmup_start: float = option(0.01, "learning-rate factor at the start of warm-up")
    out: str = option("runs/finetune", "output directory", metavar="DIR")


def export_heated(run: Run) -> None:
    """heated.pt: what the task exports (the classifier for classify, the encoder for reconstruct);
    policy.pt: the agent's state; the agent's own figures of a few validation images (``write_figures``);
    policy_summary.json for agents with a per-image policy (PGNM)."""
    run.task.export(run.model, run.out)
    if run.agent.state_dict():
        save_checkpoint(run.out / "policy.pt", {"agent": run.agent.state_dict(), "config": run.agent.resolved_config()})
    x = figure_images(run)  # (n, C, S, S) normalised
    run.agent.write_figures(run.model, x, run.out, run.eval_aug.mean, run.eval_aug.std)
    if hasattr(run.agent, "drift_from_untrained"):
        write_policy_summary(run)


def write_policy_summary(run: Run) -> dict:
    """policy_summary.json: on the validation split, the policy's expected keep per class (mean and spread of
    the per-image means) and what learning changed (against the untrained policy with the same buffers:
    share of cells whose Beta mean moved by more than 0.1, mean KL); the last epoch's logged drift. Says
    "policy barely moved: ..." (tqdm.write) when under 1% of the validation cells moved.

    Here, after training, rather than in the step: per-class means need the labels of a whole split and
    one pass over it, which the step's scalar logs cannot give without a host sync per batch.
    """
    summary: dict = {}
    split = run.pool.splits.get("val")
    if split is not None and len(split):
        loader = BatchLoader(
            split,
            run.cfg.eval_batch_size,
            shuffle=False,
            seed=0,
            drop_last=False,
            device=run.device,
            rank=0,
            world_size=1,
        )
        keeps, labels, moved, kl = [], [], [], []
        for x_u8, y in loader.epoch(0):
            x = run.eval_aug(x_u8, None)
            keeps.append(run.agent.cell_means(x).mean(1).double().cpu())  # (B,) mean keep per image
            labels.append(y.cpu())
            drift = run.agent.drift_from_untrained(x)
            moved.append(drift["moved"].double().mean(1).cpu())
            kl.append(drift["kl"].double().mean(1).cpu())
        keep, label = torch.cat(keeps), torch.cat(labels)
        summary["val_mask_mean_per_class"] = {
            c: keep[label == i].mean().item() if (label == i).any() else None for i, c in enumerate(run.pool.classes)
        }
        summary["val_mask_std_per_class"] = {
            c: keep[label == i].std(correction=0).item() if (label == i).any() else None
            for i, c in enumerate(run.pool.classes)
        }
        summary["val_moved_fraction"] = torch.cat(moved).mean().item()
        summary["val_kl_from_untrained"] = torch.cat(kl).mean().item()
        summary["barely_moved"] = summary["val_moved_fraction"] < BARELY_MOVED
        if summary["barely_moved"]:
            tqdm.write(
                f"policy barely moved: {summary['val_moved_fraction']:.4f} of the validation cells' Beta means are "
                f"> {MOVED} from the untrained policy's (mean KL {summary['val_kl_from_untrained']:.4g})"
            )
    records = [r for r in read_jsonl(run.out / "log.jsonl") if "policy/moved_fraction" in r]
    if records:
        keys = ("policy/moved_fraction", "policy/kl_from_initial", "policy/mask_mean", "policy/mask_sample_std")
        summary["last_epoch"] = {k: records[-1][k] for k in keys if k in records[-1]}
    write_json(run.out / "policy_summary.json", summary)
    return summary


def pretrain(cfg: PretrainConfig) -> dict:
    """Pretrain with the agent of ``cfg.method``; writes heated.pt and policy.pt beside the loop's files."""
    spec = get_agent(cfg.method)
    options = spec.make_options(cfg.agent)  # a bad option fails here, before any work
    cfg = dataclasses.replace(cfg, agent=to_plain(options) if options is not None else {})  # all, resolved

    def make_agent(pool):
        return spec.build(pool.image_size, pool.channels, seed=cfg.seed, options=cfg.agent)

    extra = {"method": cfg.method, "task": spec.task}
    # The agent's options that configure its task (reconstruct's scaling and validation blocks): no TrainConfig field.
    task_options = spec.task_options(options)
    return fit(cfg, make_agent, task=spec.task, extra_config=extra, on_finish=export_heated, task_options=task_options)


def finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune ``cfg.init`` (heated.pt, an rlmask checkpoint or a timm state dict) on clean images."""
    if not cfg.init and not cfg.resume:
        raise UserError("--init: required (the heated model to fine-tune, e.g. DIR/heated.pt)")
    if cfg.warmup_epochs is None:
        cfg = dataclasses.replace(cfg, warmup_epochs=FINETUNE_WARMUP * cfg.epochs)
    if cfg.model is None:  # the architecture the heated model was trained as
        arch = init_architecture(cfg.init or cfg.resume, cfg.trust_checkpoint)
        if arch["model"] is None:
            raise UserError(
                f"--init {cfg.init}: a plain state dict without a config.json beside it; name its "
                "architecture with --model"
            )
        small_stem = cfg.small_stem if cfg.small_stem is not None else arch["small_stem"]
        cfg = dataclasses.replace(cfg, model=arch["model"], small_stem=small_stem)
    return fit(cfg, extra_config={"method": "finetune"})
