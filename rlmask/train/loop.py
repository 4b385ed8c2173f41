"""The one training loop every method uses, in small named pieces that read top to bottom.

data -> batch on device -> augmentation -> ``agent.train_step`` (the agent masks the batch and makes its
updates through the step context) -> logs, validation, checkpoints. Plain training is the loop with
the no-mask agent; every masking method only swaps the agent (and, through it, possibly the task).

``fit`` = ``build_run`` (pool, task, model, agent, optimisers) -> ``restore`` (``--resume``) ->
per epoch ``train_epoch``, ``validate``, ``end_epoch`` (best.pt, log.jsonl, last.pt) -> ``finish``
(metrics.json, exports).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from rlmask import runtime
from rlmask.agents.augment import augment_batch, batch_seed
from rlmask.agents.base import AgentOptimizer, MaskAgent
from rlmask.agents.registry import same_agent_options
from rlmask.config import check_ranges, option
from rlmask.data import DEFAULT_MEAN, DEFAULT_STD, Augment, BatchLoader, Pool, build_pool
from rlmask.data.options import DataOptions, data_option
from rlmask.errors import UserError, reason
from rlmask.io import atomic_write_bytes, load_checkpoint, read_jsonl, save_checkpoint, to_plain, write_json, write_npz
from rlmask.models import check_model_name, default_small_stem
from rlmask.models.weights import load_init_weights
from rlmask.train.loggers import LOGGERS, Loggers, check_loggers, mask_grid
from rlmask.train.schedules import make_scheduler
from rlmask.train.step import TrainStep
from rlmask.train.tasks import build_task


@dataclass
class TrainConfig:
    """Options of ``rlmask train`` (and the base of pretrain / finetune)."""

    data: list[str] = option(
        ["synthetic"],
        "data source(s): file.npz, medmnist:NAME[@SIZE], image folder, synthetic[:k=v,...]",
        metavar="SPEC",
    )
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
    image_size: int | None = option(
        None, "image side in pixels (default: the largest native side of the data)", metavar="PX"
    )
    channels: int | None = option(None, "image channels, 1 or 3 (default: 3 if any source is RGB, else 1)")
    batch_size: int = option(64, "training batch size per process")
    eval_batch_size: int = option(256, "evaluation batch size")
    seed: int = option(0, "seed of weights, data order, augmentation and masks")
    out: str = option("runs/train", "output directory", metavar="DIR")
    resume: str | None = option(None, "continue exactly from a checkpoint (DIR/last.pt)", metavar="CKPT")
    init: str | None = option(
        None, "initial classifier weights: an rlmask checkpoint, heated.pt or a timm state dict", metavar="CKPT"
    )
    optimizer: str = option("sgd", "optimiser of the classifier", choices=["sgd", "adamw", "adam"])
    lr: float = option(0.1, "peak learning rate of the classifier")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(1e-4, "weight decay")
    schedule: str = option(
        "cosine", "learning-rate schedule after warm-up", choices=["cosine", "step", "constant", "multistep"]
    )
    warmup_epochs: float = option(0.0, "linear warm-up length in epochs")
    warmup_start: float = option(0.01, "learning-rate factor at the start of warm-up")
    step_size: float = option(30.0, "epochs between decays of the step schedule")
    gamma: float = option(0.1, "decay factor of the step and multistep schedules")
    milestones: list[float] = option(
        [100.0, 200.0],
        "epochs at which the multistep schedule multiplies the lr by "
        "gamma (Intelligent Masking's reference: 100 200 with gamma 0.33)",
        metavar="EPOCH",
    )
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    clip_grad: float = option(0.0, "clip the classifier's gradient norm to this value (0: off)")
    amp: bool | None = option(
        None,
        "bf16 autocast (default: where the device computes bf16 natively: CUDA GPUs, CPUs with AVX512-BF16 or AMX)",
    )
    sync_bn: bool = option(False, "batch-norm statistics over the global batch under torchrun (SyncBatchNorm)")
    compile: bool | None = option(None, "torch.compile the classifier and the agent's networks (default: on CUDA only)")
    channels_last: bool | None = option(
        None,
        "channels-last memory format for the networks and batches (default: per device and precision, "
        "recorded in config.json; channels-last on CPU and CUDA in float32 and bf16, as measured)",
    )
    small_stem: bool | None = option(
        None, "stride-1 stem without max-pool for small images (default: on for built-in models at <= 32 px)"
    )
    train_per_class: int | None = option(None, "use at most this many training images per class (seeded subset)")
    eval_per_class: int | None = option(
        None, "evaluate on at most this many val/test images per class (one fixed subset)"
    )
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    num_workers: int = option(0, "data-loading worker processes (image folders)")
    checkpoint_every: int = option(0, "also write last.pt every N training steps (0: at epoch ends only)")
    checkpoint_epochs: int = option(
        1,
        "write last.pt at the end of every N-th epoch and of the last (where epochs are a few steps, saving "
        "the checkpoint each time costs more than training; a crash loses at most N - 1 epochs)",
    )
    val_every: int = option(
        1, "validate every N epochs and after the last (best.pt: the best validated epoch); training is unchanged"
    )
    cache_dir: str | None = option(None, "download/index cache (default: $RLMASK_CACHE or ~/.cache/rlmask)")
    progress: bool = option(True, "show progress bars")
    logger: list[str] = option(
        [],
        "experiment loggers besides log.jsonl, repeatable: jsonl (steps.jsonl), csv (epochs.csv, steps.csv), "
        "tensorboard (tensorboard/, with a grid of masked validation images per epoch)",
        choices=list(LOGGERS),
    )
    log_every: int = option(50, "steps between the loggers' step records")
    versioned: bool = option(
        False, "when --out holds a finished run, write this run into --out/version_N (the next free N)"
    )
    overwrite: bool = option(False, "replace a finished run in --out (its metrics, logs and checkpoints)")
    trust_checkpoint: bool = option(
        False,
        "load --init / --resume checkpoints that hold Python objects beyond tensors "
        "and plain data: this RUNS CODE from the file (only for files you trust)",
    )

    def validate(self) -> None:
        """Raise UserError naming the first option that is out of range (before any work is done)."""
        check_ranges(
            self,
            {
                "epochs": (">=", 1),
                "batch_size": (">=", 1),
                "eval_batch_size": (">=", 1),
                "lr": (">", 0),
                "seed": (">=", 0),
                "momentum": ("in", (0, 1)),
                "weight_decay": (">=", 0),
                "warmup_epochs": (">=", 0),
                "warmup_start": (">", 0),
                "step_size": (">", 0),
                "gamma": (">", 0),
                "label_smoothing": ("in", (0, 1)),
                "clip_grad": (">=", 0),
                "image_size": (">=", 8),
                "train_per_class": (">=", 1),
                "eval_per_class": (">=", 1),
                "num_workers": (">=", 0),
                "checkpoint_every": (">=", 0),
                "checkpoint_epochs": (">=", 1),
                "val_every": (">=", 1),
                "log_every": (">=", 1),
            },
        )
        check_loggers(self.logger)
        if self.channels not in (None, 1, 3):
            raise UserError(f"--channels {self.channels}: must be 1 or 3")
        if self.warmup_epochs is not None and self.warmup_epochs > self.epochs:
            raise UserError(
                f"--warmup-epochs {self.warmup_epochs}: longer than the run (--epochs {self.epochs}); "
                "the peak learning rate would never be reached"
            )
        DataOptions.from_config(self).validate()


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for the augmentation of one epoch, independent of everything that ran before."""
    return runtime.derive_seed(seed, epoch, 0xA06)


def make_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD, AdamW or Adam over ``params`` (already on their device), with the fused kernel where torch has one.

    Fused steps read and write each parameter once instead of once per update term.
    """
    options = {
        "sgd": (torch.optim.SGD, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}),
        "adamw": (torch.optim.AdamW, {"lr": lr, "weight_decay": weight_decay}),
        "adam": (torch.optim.Adam, {"lr": lr, "weight_decay": weight_decay}),
    }
    if name not in options:
        raise UserError(f"--optimizer {name}: unknown optimiser ({', '.join(options)})")
    cls, kwargs = options[name]
    params = list(params)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this torch, device or dtype
        return cls(params, **kwargs)


def make_agent_optimizer(agent: MaskAgent) -> torch.optim.Optimizer | None:
    """The agent's own optimiser, built from ``agent.optimizer_options()`` (None for agents without one)."""
    options: AgentOptimizer | None = agent.optimizer_options()
    if options is None:
        return None
    return make_optimizer(agent.parameters(), options.optimizer, options.lr, options.momentum, options.weight_decay)


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
        runtime.all_reduce_mean_(stacked)
        return dict(zip(keys, stacked.tolist()))


@dataclass
class Run:
    """Everything one training run is made of, built once by ``build_run``."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    amp: bool
    show: bool  # progress output (main process only)
    pool: Pool
    task: object
    model: nn.Module  # the plain module: what is saved
    agent: MaskAgent
    step: TrainStep  # the agents' StepContext (holds the optimisers and the wrapped model)
    scheduler: object
    agent_scheduler: object | None
    loader: BatchLoader
    train_aug: Augment
    eval_aug: Augment
    memory_format: torch.memory_format
    config: dict  # resolved options, as written to config.json
    data_info: dict
    model_info: dict
    loggers: Loggers = field(default_factory=lambda: Loggers([], Path(".")))  # set by fit (first process)


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0  # epoch in progress
    batch: int = 0  # batches of it already done
    step: int = 0
    best: dict = field(default_factory=dict)
    last_val: dict | None = None
    logs: LogAccumulator = field(default_factory=LogAccumulator)  # this epoch's running sums


def _pool(cfg: TrainConfig, show: bool) -> Pool:
    pool = build_pool(
        cfg.data,
        cfg.image_size,
        cfg.channels,
        cache_dir=cfg.cache_dir,
        progress=show,
        options=DataOptions.from_config(cfg),
        seed=cfg.seed,
    )
    if cfg.train_per_class:
        pool = pool.subsample("train", cfg.train_per_class, seed=cfg.seed)
    for split in ("val", "test") if cfg.eval_per_class else ():
        if split in pool.splits:  # the same subset for every seed and method: seed 0
            pool = pool.subsample(split, cfg.eval_per_class, seed=0)
    return pool


def build_run(
    cfg: TrainConfig,
    make_agent: Callable[[Pool], MaskAgent],
    task_name: str = "classify",
    extra_config: dict | None = None,
    task_options: dict | None = None,
) -> Run:
    """Pool, task (with ``task_options``), model and agent on the device, optimisers, schedules and the step context."""
    device = runtime.setup(cfg.device)
    world = runtime.world_size()
    amp = runtime.resolve_amp(cfg.amp, device)
    show = cfg.progress and runtime.is_main_process()
    check_model_name(cfg.model)  # before the data is read
    pool = _pool(cfg, show)
    small_stem = cfg.small_stem if cfg.small_stem is not None else default_small_stem(cfg.model, pool.image_size)

    task = build_task(task_name, label_smoothing=cfg.label_smoothing, **(task_options or {}))
    # A task may normalise its inputs otherwise (reconstruct's reference scaling); recorded for readers of heated.pt.
    mean, std = getattr(task, "normalisation", (DEFAULT_MEAN, DEFAULT_STD))
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = task.build_model(cfg.model, len(pool.classes), pool.channels, small_stem)
    agent = make_agent(pool)
    if cfg.init:
        load_init_weights(model, cfg.init, trust=cfg.trust_checkpoint)
    channels_last, channels_last_reason = runtime.resolve_channels_last(cfg.channels_last, device, amp)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    agent.to(device, memory_format=memory_format)

    loader = BatchLoader(
        pool.splits["train"],
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
        device=device,
        rank=runtime.rank(),
        world_size=world,
        num_workers=cfg.num_workers,
    )
    steps_per_epoch = len(loader)
    if len(pool.splits["val"]) == 0:
        raise UserError(
            f"--data {' '.join(cfg.data)}: the validation split is empty; a run needs validation images "
            "(give a val split, or a larger --val-fraction)"
        )
    if steps_per_epoch == 0:
        raise UserError(
            f"--batch-size {cfg.batch_size}: larger than the training split "
            f"({len(pool.splits['train'])} images over {world} process(es))"
        )
    total_steps = steps_per_epoch * cfg.epochs
    sched_kwargs = dict(
        total_steps=total_steps,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        warmup_start=cfg.warmup_start,
        step_size=max(1, round(cfg.step_size * steps_per_epoch)),
        gamma=cfg.gamma,
        milestones=tuple(round(m * steps_per_epoch) for m in cfg.milestones),
    )
    optimizer = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, schedule=cfg.schedule, **sched_kwargs)
    agent_opt, agent_sched = make_agent_optimizer(agent), None
    if agent_opt is not None:
        agent_sched = make_scheduler(agent_opt, schedule=agent.optimizer_options().schedule, **sched_kwargs)

    train_model = model
    if world > 1 and cfg.sync_bn:
        runtime.convert_sync_batchnorm(model, device)
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if runtime.resolve_compile(cfg.compile, device):
        train_model = compile_for_training(train_model, agent)
    step = TrainStep(
        train_model,
        task.loss,
        optimizer,
        agent,
        agent_opt,
        device=device,
        amp=amp,
        clip_grad=cfg.clip_grad,
        total_steps=total_steps,
    )
    torch.manual_seed(runtime.rank_seed(cfg.seed))  # any global-RNG use (dropout), offset by rank

    config = (
        to_plain(cfg)
        | {
            "small_stem": small_stem,
            "image_size": pool.image_size,
            "channels": pool.channels,
            "world_size": world,
            "steps_per_epoch": steps_per_epoch,
            "amp": amp,
            "channels_last": channels_last,
            "channels_last_reason": channels_last_reason,
            "agent_resolved": agent.resolved_config(),
            "mean": mean,
            "std": std,
            "provenance": runtime.provenance(device),
        }
        | (extra_config or {})
    )
    data_info = {
        "classes": pool.classes,
        "channels": pool.channels,
        "image_size": pool.image_size,
        "mean": mean,
        "std": std,
    }
    model_info = {"name": cfg.model, "small_stem": small_stem, "num_classes": len(pool.classes), "task": task.name}
    return Run(
        cfg,
        Path(cfg.out),
        device,
        amp,
        show,
        pool,
        task,
        model,
        agent,
        step,
        scheduler,
        agent_sched,
        loader,
        Augment(pool.image_size, train=True, mean=mean, std=std),
        Augment(pool.image_size, train=False, mean=mean, std=std),
        memory_format,
        config,
        data_info,
        model_info,
    )


RESUME_KEYS = (
    "data",
    "model",
    "image_size",
    "batch_size",
    "seed",
    "method",
    "agent",
    "world_size",
    "val_fraction",
    "test_fraction",
    "split_seed",
    "exclude",
    "keep_masks",
    "skip_bad_rows",
    "window",
)


def restore(run: Run, path: str) -> Progress:
    """The progress saved in checkpoint ``path``, with every network, optimiser, schedule and RNG restored."""
    ckpt = load_checkpoint(path, "--resume", run.cfg.trust_checkpoint)
    old = ckpt.get("config", {})
    for key in RESUME_KEYS:
        if key == "agent" and same_agent_options(run.config.get("method"), old.get(key), run.config.get(key)):
            continue
        if key in old and old.get(key) != run.config.get(key):
            raise UserError(
                f"--resume {path}: checkpoint was made with {key}={old.get(key)!r}, "
                f"this run has {key}={run.config.get(key)!r}"
            )
    step = run.step
    try:
        run.model.load_state_dict(ckpt["model"])
        step.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("agent"):
            run.agent.load_state_dict(ckpt["agent"])
        if step.agent_optimizer is not None:
            step.agent_optimizer.load_state_dict(ckpt["agent_optimizer"])
            run.agent_scheduler.load_state_dict(ckpt["agent_scheduler"])
        progress = Progress(
            ckpt["epoch"], ckpt["batch"], ckpt["step"], ckpt.get("best") or initial_best(run.task), ckpt.get("metrics")
        )
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        why = reason(err)
        raise UserError(f"--resume {path}: does not fit this run ({why})") from None
    if ckpt.get("epoch_logs"):
        progress.logs.load_state_dict(ckpt["epoch_logs"], run.device)
    runtime.restore_rng(ckpt["rng_state"])
    return progress


def initial_best(task) -> dict:
    return {"epoch": None, task.best_metric: -math.inf if task.maximize else math.inf}


def checkpoint_state(run: Run, progress: Progress) -> dict:
    """The checkpoint schema (see the README): enough to continue exactly where ``progress`` stands."""
    step = run.step
    step.raise_if_diverged()  # never save a diverged model over a good checkpoint
    return {
        "kind": "rlmask",
        "model": run.model.state_dict(),
        "optimizer": step.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": progress.epoch,
        "batch": progress.batch,
        "step": progress.step,
        "config": run.config,
        "rng_state": runtime.capture_rng(),
        "metrics": progress.last_val,
        "best": progress.best,
        "agent": run.agent.state_dict() or None,
        "agent_optimizer": step.agent_optimizer.state_dict() if step.agent_optimizer else None,
        "agent_scheduler": run.agent_scheduler.state_dict() if run.agent_scheduler else None,
        "data": run.data_info,
        "model_info": run.model_info,
        "epoch_logs": progress.logs.state_dict(),
    }


def train_epoch(run: Run, progress: Progress) -> float:
    """The batches of ``progress.epoch`` from ``progress.batch`` on; returns the seconds it took."""
    cfg, epoch = run.cfg, progress.epoch
    run.model.train()
    run.agent.train()
    start = time.perf_counter()
    # One crop per sample and epoch, drawn before the epoch: the same crops whatever the number of
    # processes, and nothing to save for an exact resume.
    n_train = len(run.pool.splits["train"])
    crops = run.train_aug.sample(n_train, torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch)))
    order = run.loader.indices(epoch)  # (per_rank,) this process's samples in batch order
    steps_per_epoch = len(run.loader)
    bar = tqdm(
        run.loader.epoch(epoch, start_batch=progress.batch),
        total=steps_per_epoch,
        initial=progress.batch,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        leave=False,
        disable=None if run.show else True,
    )
    try:
        for x_u8, y in bar:
            theta = crops[order[progress.batch * cfg.batch_size : (progress.batch + 1) * cfg.batch_size]]  # (B, 2, 3)
            x = run.train_aug(x_u8, theta=theta).contiguous(memory_format=run.memory_format)  # (B, C, S, S)
            if run.agent.augment != "none":  # the agent's batch augmentation (mixup/cutmix: y becomes (B, K))
                x, y = augment_batch(
                    run.agent.augment,
                    x,
                    y,
                    num_classes=len(run.pool.classes),
                    seed=batch_seed(cfg.seed, progress.step),
                    mean=run.train_aug.mean,
                    std=run.train_aug.std,
                )
                x = x.contiguous(memory_format=run.memory_format)
            logs = run.agent.train_step(run.step.begin(epoch, progress.step), x, y)
            progress.logs.add(logs)
            if run.loggers and (progress.step + 1) % cfg.log_every == 0:
                run.loggers.log_step(progress.step + 1, epoch, logs, run.scheduler.get_last_lr()[0])
            run.scheduler.step()
            if run.agent_scheduler is not None:
                run.agent_scheduler.step()
            progress.batch += 1
            progress.step += 1
            mid_epoch = progress.batch < steps_per_epoch
            if (
                cfg.checkpoint_every
                and progress.step % cfg.checkpoint_every == 0
                and mid_epoch
                and runtime.is_main_process()
            ):
                run.loggers.flush()  # before the checkpoint: a kill between them must not leave rows missing
                save_checkpoint(run.out / "last.pt", checkpoint_state(run, progress))
    finally:
        bar.close()  # before any error message, so it stands on its own line
    run.step.raise_if_diverged()
    return time.perf_counter() - start


def _eval_kwargs(run: Run, progress_name: str | None) -> dict:
    train = {"train": run.pool.splits["train"]} if getattr(run.task, "wants_train_split", False) else {}
    return dict(
        batch_size=run.cfg.eval_batch_size,
        device=run.device,
        amp=run.amp,
        progress=progress_name if run.show else None,
        num_workers=run.cfg.num_workers,
        **train,
    )


def _view_fn(view, generator: torch.Generator):
    return lambda x: view.fn(x, generator)


def validate(run: Run, progress: Progress) -> dict:
    """Validation metrics of the epoch just trained (``progress.last_val``) and its log record's scores."""
    split, classes, epoch = run.pool.splits["val"], run.pool.classes, progress.epoch
    runtime.broadcast_buffers(run.model)  # evaluate (on every process's share) what rank 0 saves
    progress.last_val = run.task.validate(run.model, split, classes, run.eval_aug, **_eval_kwargs(run, "val"))
    record = {f"val/{k}": progress.last_val[k] for k in run.task.summary_metrics}
    for name, view in run.agent.eval_views().items():  # e.g. PGNM's base mask: val_masked/...
        generator = torch.Generator().manual_seed(run.cfg.seed * 31 + epoch)
        scores = run.task.validate(
            run.model, split, classes, run.eval_aug, view=_view_fn(view, generator), **_eval_kwargs(run, f"val {name}")
        )
        record |= {f"val_{name}/{k}": scores[k] for k in run.task.summary_metrics}
    return record


def _checkpoint_due(cfg: TrainConfig, epochs_done: int) -> bool:
    """Whether last.pt is written after ``epochs_done`` epochs (--checkpoint-epochs, and always after the last)."""
    return epochs_done % cfg.checkpoint_epochs == 0 or epochs_done >= cfg.epochs


def end_epoch(run: Run, progress: Progress, record: dict, log_lines: list[str], validated: bool = True) -> None:
    """Close the epoch: best.pt when it was ``validated`` and the task's metric improved, log.jsonl, last.pt,
    a summary line."""
    task = run.task
    improved = False
    if validated:
        value, best = progress.last_val[task.best_metric], progress.best[task.best_metric]
        improved = value > best if task.maximize else value < best
    if improved:
        progress.best = {"epoch": progress.epoch, task.best_metric: value}
    progress.epoch += 1
    progress.batch = 0
    progress.logs = LogAccumulator()
    if not runtime.is_main_process():
        return
    log_lines.append(json.dumps(record))
    atomic_write_bytes(run.out / "log.jsonl", ("\n".join(log_lines) + "\n").encode())
    run.loggers.log_epoch(record)
    if "tensorboard" in run.cfg.logger:
        _log_mask_grid(run, record["step"])
    state = checkpoint_state(run, progress) if improved or _checkpoint_due(run.cfg, progress.epoch) else None
    if _checkpoint_due(run.cfg, progress.epoch):
        run.loggers.flush()  # rows past the checkpoint's step are dropped on resume; rows before it must exist
        save_checkpoint(run.out / "last.pt", state)
    if improved:
        save_checkpoint(run.out / "best.pt", state)
    if run.show:
        summary = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("losses/", "val/")))
        tqdm.write(f"epoch {progress.epoch}/{run.cfg.epochs} ({record['train_seconds']:.1f}s): {summary}")


FIGURE_IMAGES = 8  # validation images in the agent's figures and the loggers' mask grid


def figure_images(run: Run) -> torch.Tensor:
    """(n, C, S, S) normalised: ``FIGURE_IMAGES`` validation images evenly spread over the split, the same in
    every epoch and run of the pool."""
    val = run.pool.splits["val"]
    index = torch.linspace(0, len(val) - 1, min(FIGURE_IMAGES, len(val))).long()
    return run.eval_aug(val.load(index).to(run.device), None)


@torch.no_grad()
def _log_mask_grid(run: Run, step: int) -> None:
    """The agent's masks on fixed validation images (rows: image, mask, masked image), drawn from a fixed seed
    so epochs differ only by what the agent learnt; nothing for agents without masks."""
    x = figure_images(run)
    was_training = run.agent.training
    run.agent.eval()
    try:
        sampled = run.agent.sample_masks(x, torch.Generator().manual_seed(run.cfg.seed))
    finally:
        run.agent.train(was_training)
    if not sampled or "mask" not in sampled:
        return
    mean = torch.as_tensor(run.eval_aug.mean, device=x.device).reshape(1, -1, 1, 1)
    std = torch.as_tensor(run.eval_aug.std, device=x.device).reshape(1, -1, 1, 1)
    run.loggers.log_images("masks", mask_grid(x * std + mean, sampled["mask"]), step)


def finish(run: Run, progress: Progress, on_finish: Callable | None) -> dict:
    """metrics.json of the final model on val and test (and under the agent's final views); exports."""
    runtime.broadcast_buffers(run.model)
    splits, classes = run.pool.splits, run.pool.classes
    metrics = {}
    for split in ("val", "test"):
        if split in splits:
            metrics[split] = run.task.validate(
                run.model, splits[split], classes, run.eval_aug, **_eval_kwargs(run, split)
            )
        else:
            metrics[split] = None
    metrics["best"] = progress.best
    for name, view in run.agent.eval_views().items():
        for split in ("val", "test") if view.final else ():
            if split in splits:
                generator = torch.Generator().manual_seed(run.cfg.seed * 31 + run.cfg.epochs)
                metrics[f"{split}_{name}"] = run.task.validate(
                    run.model,
                    splits[split],
                    classes,
                    run.eval_aug,
                    view=_view_fn(view, generator),
                    **_eval_kwargs(run, f"{split} {name}"),
                )
    predictions = None  # the test split's predictions, kept for paired comparisons (predictions.npz)
    if hasattr(run.task, "predict") and "test" in splits:
        predictions = run.task.predict(run.model, splits["test"], run.eval_aug, **_eval_kwargs(run, None))
    if runtime.is_main_process():
        if predictions is not None:
            write_npz(run.out / "predictions.npz", predictions)
        write_json(run.out / "metrics.json", metrics)
        if on_finish is not None:
            on_finish(run)
    run.loggers.close()
    runtime.barrier()
    return metrics


def _completed_log_lines(path: Path, before_epoch: int) -> list[str]:
    """log.jsonl lines of epochs already completed (a resumed run rewrites the rest)."""
    return [json.dumps(r) for r in read_jsonl(path) if isinstance(r.get("epoch"), int) and r["epoch"] < before_epoch]


def fit(
    cfg: TrainConfig,
    make_agent: Callable[[Pool], MaskAgent] = lambda pool: MaskAgent(),
    *,
    task: str = "classify",
    extra_config: dict | None = None,
    on_finish: Callable[[Run], None] | None = None,
    task_options: dict | None = None,
) -> dict:
    """Train ``cfg.model`` on ``cfg.data`` with the agent built by ``make_agent``; returns metrics.json's content.

    Writes into ``cfg.out``: config.json, log.jsonl (one line per epoch), last.pt, best.pt (by the
    task's validation metric) and metrics.json ({"val": ..., "test": ..., "best": ...} of the final model).
    """
    cfg.validate()
    run = build_run(cfg, make_agent, task, extra_config, task_options)
    progress = restore(run, cfg.resume) if cfg.resume else Progress(best=initial_best(run.task))
    log_lines = []
    if runtime.is_main_process():
        run.out.mkdir(parents=True, exist_ok=True)
        write_json(run.out / "config.json", run.config)
        log_lines = _completed_log_lines(run.out / "log.jsonl", progress.epoch)
        run.loggers = Loggers(cfg.logger, run.out, progress.step, progress.epoch, resumed=bool(cfg.resume))
    while progress.epoch < cfg.epochs:
        seconds = train_epoch(run, progress)
        train_logs = progress.logs.means()
        last = progress.epoch + 1 == cfg.epochs
        scores = validate(run, progress) if last or (progress.epoch + 1) % cfg.val_every == 0 else None
        record = {
            "epoch": progress.epoch,
            "step": progress.step,
            "lr": run.scheduler.get_last_lr()[0],
            "train_seconds": round(seconds, 3),
            **train_logs,
            **(scores or {}),
        }
        end_epoch(run, progress, record, log_lines, validated=scores is not None)
    return finish(run, progress, on_finish)
