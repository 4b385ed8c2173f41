"""The one training loop every method uses.

data -> batch on device -> augmentation -> agent (masks, classifier, loss) -> one backward ->
classifier and agent optimisers step -> logs, validation, checkpoints. Plain training is the
loop with the no-mask agent; PGNM and the baselines only swap the agent.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from rlmask import config as cfgmod
from rlmask.agents.base import AgentOptimizer, MaskAgent
from rlmask.config import option
from rlmask.data import DEFAULT_MEAN, DEFAULT_STD, Augment, BatchLoader, Pool, build_pool
from rlmask.data.options import DataOptions, data_option
from rlmask.errors import UserError
from rlmask.evaluate.inference import evaluate_split
from rlmask.models import create_model, default_small_stem
from rlmask.train import distributed as dist
from rlmask.train.checkpoint import atomic_write_bytes, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from rlmask.train.init import load_init_weights
from rlmask.train.schedules import make_scheduler

SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


@dataclass
class TrainConfig:
    """Options of ``rlmask train`` (and the base of pretrain / finetune)."""

    data: list[str] = option(["synthetic"], "data source(s): file.npz, medmnist:NAME[@SIZE], image folder, synthetic[:k=v,...]", metavar="SPEC")
    # --- how image folders and manifests are read: rlmask.data.options.DataOptions, same names (issue 14) ---
    val_fraction: float = data_option("val_fraction")
    test_fraction: float = data_option("test_fraction")
    split_seed: int | None = data_option("split_seed")
    exclude: list[str] = data_option("exclude")
    keep_masks: bool = data_option("keep_masks")
    skip_bad_rows: bool = data_option("skip_bad_rows")
    window: str | None = data_option("window")
    # --- end of the data options ---
    model: str = option("resnet18", "classifier: a registered model (see `rlmask models`) or timm:<name>")
    epochs: int = option(10, "training epochs")
    image_size: int | None = option(None, "image side in pixels (default: the largest native side of the data)", metavar="PX")
    channels: int | None = option(None, "image channels, 1 or 3 (default: 3 if any source is RGB, else 1)")
    batch_size: int = option(64, "training batch size per process")
    eval_batch_size: int = option(256, "evaluation batch size")
    seed: int = option(0, "seed of weights, data order, augmentation and masks")
    out: str = option("runs/train", "output directory", metavar="DIR")
    resume: str | None = option(None, "continue exactly from a checkpoint (DIR/last.pt)", metavar="CKPT")
    init: str | None = option(None, "initial classifier weights: an rlmask checkpoint, heated.pt or a timm state dict", metavar="CKPT")
    optimizer: str = option("sgd", "optimiser of the classifier", choices=["sgd", "adamw"])
    lr: float = option(0.1, "peak learning rate of the classifier")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(1e-4, "weight decay")
    schedule: str = option("cosine", "learning-rate schedule after warm-up", choices=["cosine", "step", "constant"])
    warmup_epochs: float = option(0.0, "linear warm-up length in epochs")
    warmup_start: float = option(0.01, "learning-rate factor at the start of warm-up")
    step_size: float = option(30.0, "epochs between decays of the step schedule")
    gamma: float = option(0.1, "decay factor of the step schedule")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    clip_grad: float = option(0.0, "clip the classifier's gradient norm to this value (0: off)")
    amp: bool | None = option(None, "bf16 autocast (default: where the device computes bf16 natively: CUDA GPUs, "
                              "CPUs with AVX512-BF16 or AMX)")
    sync_bn: bool = option(False, "batch-norm statistics over the global batch under torchrun (SyncBatchNorm)")
    compile: bool | None = option(None, "torch.compile the classifier and the agent's networks (default: on CUDA only)")
    channels_last: bool = option(True, "channels-last memory format for the networks and batches (faster on CPU and GPU)")
    small_stem: bool | None = option(None, "stride-1 stem without max-pool for small images (default: on for built-in models at <= 32 px)")
    train_per_class: int | None = option(None, "use at most this many training images per class (seeded subset)")
    eval_per_class: int | None = option(None, "evaluate on at most this many val/test images per class (one fixed subset)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    num_workers: int = option(0, "data-loading worker processes (image folders)")
    checkpoint_every: int = option(0, "also write last.pt every N training steps (0: at epoch ends only)")
    cache_dir: str | None = option(None, "download/index cache (default: $RLMASK_CACHE or ~/.cache/rlmask)")
    progress: bool = option(True, "show progress bars")

    def validate(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "lr": self.lr}
        for name, value in positive.items():
            if value <= 0:
                raise UserError(f"--{name.replace('_', '-')} {value}: must be positive")
        if self.image_size is not None and self.image_size < 8:
            raise UserError(f"--image-size {self.image_size}: must be at least 8")
        if self.channels not in (None, 1, 3):
            raise UserError(f"--channels {self.channels}: must be 1 or 3")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing {self.label_smoothing}: must be in [0, 1)")


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for the augmentation of one epoch, independent of everything that ran before."""
    return int(np.random.SeedSequence([seed, epoch, 0xA06]).generate_state(1)[0])


def make_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD, AdamW or Adam over ``params`` (already on their device), with the fused kernel where torch has one.

    Fused steps read and write each parameter once instead of once per update term.
    """
    options = {"sgd": (torch.optim.SGD, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}),
               "adamw": (torch.optim.AdamW, {"lr": lr, "weight_decay": weight_decay}),
               "adam": (torch.optim.Adam, {"lr": lr, "weight_decay": weight_decay})}
    if name not in options:
        raise UserError(f"--optimizer {name}: unknown optimiser ({', '.join(options)})")
    cls, kwargs = options[name]
    params = list(params)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this torch, device or dtype
        return cls(params, **kwargs)


def compile_for_training(train_model: nn.Module, agent: MaskAgent) -> nn.Module:
    """torch.compile the classifier (returned wrapped) and the agent's networks (in place).

    Compiled wrappers serve the step only: checkpoints are saved from the plain modules, keys unchanged.
    """
    for child in agent.children():
        if any(True for _ in child.parameters()):
            child.compile()
    return torch.compile(train_model)


class LogAccumulator:
    """Sums of per-step scalar tensors kept on the device: no host sync inside the step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        for key, value in logs.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def state_dict(self) -> dict:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "count": self.count}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.count = state["count"]

    def means(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys]) / max(self.count, 1)
        dist.all_reduce_mean_(stacked)
        return dict(zip(keys, stacked.tolist()))


def train_step(
    model: nn.Module,
    agent: MaskAgent,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: Callable,
    optimizer: torch.optim.Optimizer,
    agent_optimizer: torch.optim.Optimizer | None,
    *,
    amp: bool = False,
    clip_grad: float = 0.0,
    sync_agent_grads: bool = False,
) -> dict[str, torch.Tensor]:
    """One update: the agent's loss, one backward, both optimisers step. Returns the step's logs."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss, logs = agent.training_loss(model, x, y, criterion)
    optimizer.zero_grad(set_to_none=True)
    if agent_optimizer is not None:
        agent_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if agent_optimizer is not None and sync_agent_grads:
        for p in agent.parameters():
            if p.grad is not None:
                dist.all_reduce_mean_(p.grad)
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip_grad)
    optimizer.step()
    if agent_optimizer is not None:
        agent_optimizer.step()
    return logs


def _read_log(path: Path, before_epoch: int) -> list[str]:
    """Lines of log.jsonl for epochs already completed (a resumed run rewrites the rest)."""
    if not path.exists():
        return []
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] < before_epoch:
                keep.append(line)
        except (ValueError, KeyError):
            continue
    return keep


def _check_resume_fits(ckpt: dict, cfg_plain: dict, path: str) -> None:
    old = ckpt.get("config", {})
    for key in ("data", "model", "image_size", "batch_size", "seed", "method", "agent", "world_size"):
        if key in old and old.get(key) != cfg_plain.get(key):
            raise UserError(f"--resume {path}: checkpoint was made with {key}={old.get(key)!r}, "
                            f"this run has {key}={cfg_plain.get(key)!r}")


def fit(
    cfg: TrainConfig,
    make_agent: Callable[[Pool], MaskAgent] = lambda pool: MaskAgent(),
    *,
    extra_config: dict | None = None,
    on_finish: Callable[[nn.Module, MaskAgent, Path], None] | None = None,
) -> dict:
    """Train ``cfg.model`` on ``cfg.data`` with the agent built by ``make_agent``; returns metrics.json's content.

    Writes into ``cfg.out``: config.json, log.jsonl (one line per epoch), last.pt, best.pt (by
    validation macro-F1) and metrics.json ({"val": ..., "test": ...} of the final model).
    """
    cfg.validate()
    device = dist.setup(cfg.device)
    rank, world = dist.rank(), dist.world_size()
    main = dist.is_main_process()
    out = Path(cfg.out)
    amp = dist.resolve_amp(cfg.amp, device)
    show = cfg.progress and main

    pool = build_pool(cfg.data, cfg.image_size, cfg.channels, cache_dir=cfg.cache_dir, progress=show,
                      options=DataOptions.from_config(cfg), seed=cfg.seed)
    if cfg.train_per_class:
        pool = pool.subsample("train", cfg.train_per_class, seed=cfg.seed)
    for split in ("val", "test") if cfg.eval_per_class else ():
        if split in pool.splits:  # the same subset for every seed and method: seed 0
            pool = pool.subsample(split, cfg.eval_per_class, seed=0)
    small_stem = cfg.small_stem if cfg.small_stem is not None else default_small_stem(cfg.model, pool.image_size)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = create_model(cfg.model, len(pool.classes), in_chans=pool.channels, small_stem=small_stem)
    agent = make_agent(pool)
    if cfg.init:
        load_init_weights(model, cfg.init)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    agent.to(device, memory_format=memory_format)

    loader = BatchLoader(pool.splits["train"], cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True,
                         device=device, rank=rank, world_size=world, num_workers=cfg.num_workers)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise UserError(f"--batch-size {cfg.batch_size}: larger than the training split "
                        f"({len(pool.splits['train'])} images over {world} process(es))")
    total_steps = steps_per_epoch * cfg.epochs
    sched_kwargs = dict(total_steps=total_steps, warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
                        warmup_start=cfg.warmup_start, step_size=max(1, round(cfg.step_size * steps_per_epoch)),
                        gamma=cfg.gamma)
    optimizer = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, schedule=cfg.schedule, **sched_kwargs)
    agent_opt = agent_sched = None
    agent_options: AgentOptimizer | None = agent.optimizer_options()
    if agent_options is not None:
        agent_opt = make_optimizer(agent.parameters(), agent_options.optimizer, agent_options.lr,
                                   agent_options.momentum, agent_options.weight_decay)
        agent_sched = make_scheduler(agent_opt, schedule=agent_options.schedule, **sched_kwargs)

    train_model = model
    if world > 1 and cfg.sync_bn:
        dist.convert_sync_batchnorm(model, device)
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if dist.resolve_compile(cfg.compile, device):
        train_model = compile_for_training(train_model, agent)

    def criterion(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=cfg.label_smoothing)

    train_aug = Augment(pool.image_size, train=True)
    eval_aug = Augment(pool.image_size, train=False)
    torch.manual_seed(cfg.seed * 7919 + 104729 * (rank + 1))  # any global-RNG use (dropout), offset by rank

    cfg_plain = cfgmod.to_plain(cfg) | {"small_stem": small_stem, "image_size": pool.image_size,
                                        "channels": pool.channels, "world_size": world,
                                        "steps_per_epoch": steps_per_epoch, "amp": amp, "agent_resolved": agent.resolved_config()} | (extra_config or {})
    data_info = {"classes": pool.classes, "channels": pool.channels, "image_size": pool.image_size,
                 "mean": DEFAULT_MEAN, "std": DEFAULT_STD}
    model_info = {"name": cfg.model, "small_stem": small_stem, "num_classes": len(pool.classes)}

    epoch, batch, step = 0, 0, 0
    logs = LogAccumulator()  # this epoch's running sums, saved in mid-epoch checkpoints
    best = {"epoch": None, "macro_f1": -math.inf}
    last_val = None
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume, "--resume")
        _check_resume_fits(ckpt, cfg_plain, cfg.resume)
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("agent"):
                agent.load_state_dict(ckpt["agent"])
            if agent_opt is not None:
                agent_opt.load_state_dict(ckpt["agent_optimizer"])
                agent_sched.load_state_dict(ckpt["agent_scheduler"])
            epoch, batch, step = ckpt["epoch"], ckpt["batch"], ckpt["step"]
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            raise UserError(f"--resume {cfg.resume}: does not fit this run ({reason})") from None
        best, last_val = ckpt.get("best", best), ckpt.get("metrics")
        if ckpt.get("epoch_logs"):
            logs.load_state_dict(ckpt["epoch_logs"], device)
        restore_rng(ckpt["rng_state"])

    if main:
        out.mkdir(parents=True, exist_ok=True)
        cfgmod.write_json(out / "config.json", cfg_plain)
    log_path = out / "log.jsonl"
    log_lines = _read_log(log_path, epoch) if main else []

    def checkpoint_state() -> dict:
        return {"kind": "rlmask", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "batch": batch, "step": step,
                "config": cfg_plain, "rng_state": capture_rng(), "metrics": last_val, "best": best,
                "agent": agent.state_dict() or None,
                "agent_optimizer": agent_opt.state_dict() if agent_opt else None,
                "agent_scheduler": agent_sched.state_dict() if agent_sched else None,
                "data": data_info, "model_info": model_info, "epoch_logs": logs.state_dict()}

    def eval_kwargs(progress_name: str | None) -> dict:
        return dict(batch_size=cfg.eval_batch_size, device=device, amp=amp,
                    progress=progress_name if show else None, num_workers=cfg.num_workers)

    has_masked_eval = type(agent).masked_eval_input is not MaskAgent.masked_eval_input
    while epoch < cfg.epochs:
        model.train()
        agent.train()
        start = time.perf_counter()
        # One crop per sample and epoch, drawn before the epoch: the same crops whatever the number of
        # processes, and nothing to save for an exact resume.
        crops = train_aug.sample(len(pool.splits["train"]), torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch)))
        order = loader.indices(epoch)  # (per_rank,) this process's samples in batch order
        bar = tqdm(loader.epoch(epoch, start_batch=batch), total=steps_per_epoch, initial=batch,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None if show else True)
        for x_u8, y in bar:
            theta = crops[order[batch * cfg.batch_size:(batch + 1) * cfg.batch_size]]  # (B, 2, 3)
            x = train_aug(x_u8, theta=theta).contiguous(memory_format=memory_format)  # (B, C, S, S) normalised
            step_logs = train_step(train_model, agent, x, y, criterion, optimizer, agent_opt, amp=amp,
                                   clip_grad=cfg.clip_grad, sync_agent_grads=world > 1)
            scheduler.step()
            if agent_sched is not None:
                agent_sched.step()
            logs.add(step_logs)
            batch += 1
            step += 1
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and batch < steps_per_epoch and main:
                save_checkpoint(out / "last.pt", checkpoint_state())
        bar.close()
        train_seconds = time.perf_counter() - start
        train_logs = logs.means()

        val_split = pool.splits["val"]
        dist.broadcast_buffers(model)  # evaluate (on every process's share) what rank 0 saves
        last_val = evaluate_split(model, val_split, pool.classes, eval_aug, **eval_kwargs("val"))
        record = {"epoch": epoch, "step": step, "lr": scheduler.get_last_lr()[0], "train_seconds": round(train_seconds, 3),
                  **train_logs, **{f"val/{k}": last_val[k] for k in SUMMARY_KEYS}}
        masked_gen = torch.Generator().manual_seed(cfg.seed * 31 + epoch)
        if has_masked_eval:
            masked = evaluate_split(model, val_split, pool.classes, eval_aug,
                                    mask_fn=lambda x: agent.masked_eval_input(x, masked_gen), **eval_kwargs("val masked"))
            record |= {f"val_masked/{k}": masked[k] for k in SUMMARY_KEYS}
        epoch += 1
        batch = 0
        logs = LogAccumulator()
        improved = last_val["macro_f1"] > best["macro_f1"]
        if improved:
            best = {"epoch": epoch - 1, "macro_f1": last_val["macro_f1"]}
        if main:
            log_lines.append(json.dumps(record))
            atomic_write_bytes(log_path, ("\n".join(log_lines) + "\n").encode())
            state = checkpoint_state()
            save_checkpoint(out / "last.pt", state)
            if improved:
                save_checkpoint(out / "best.pt", state)
            if show:
                summary = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("losses/", "val/")))
                tqdm.write(f"epoch {epoch}/{cfg.epochs} ({train_seconds:.1f}s): {summary}")

    dist.broadcast_buffers(model)
    metrics = {"val": evaluate_split(model, pool.splits["val"], pool.classes, eval_aug, **eval_kwargs("val")),
               "test": (evaluate_split(model, pool.splits["test"], pool.classes, eval_aug, **eval_kwargs("test"))
                        if "test" in pool.splits else None),
               "best": best}
    if main:
        cfgmod.write_json(out / "metrics.json", metrics)
        if on_finish is not None:
            on_finish(model, agent, out)
    dist.barrier()
    return metrics
