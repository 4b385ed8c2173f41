"""``rlmask transfer``: few-shot transfer of pretrained checkpoints to an unseen task, with 95% intervals.

For every shot count n (images per class of the downstream training split, or ``all``) and repeat r, a
class-balanced subset is drawn from the labels alone with a generator seeded from (seed, n, r), so every
checkpoint sees the very same images, in the same order, under the same augmentation. Each checkpoint's
backbone gets a new head for the downstream classes and is either

- ``linear``: frozen; pooled features of the needed training images and of the test split are computed
  once per checkpoint, and a linear head is trained on them (Adam), or
- ``finetune``: trained whole, with augmentation, by the same ``train_step`` as every other run.

With ``--head reference`` (linear mode only) the frozen backbone gets Intelligent Masking's downstream head
instead of the linear one: conv3x3 to 32 channels on the feature map, global average pool, FC 32-16-classes
with dropout 0.3, trained with a class-weighted loss on the cached feature maps.

Scores on the downstream test split are summarised per shot count by their mean and Student-t 95%
interval over the repeats (``mean_ci``, clipped to [0, 1]; none with a single repeat).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from rlmask.agents.base import MaskAgent
from rlmask.config import option
from rlmask.data import Augment, BatchLoader, Pool, Split, build_pool
from rlmask.data.pool import class_balanced_subset
from rlmask.errors import UserError
from rlmask.evaluate.inference import evaluate_split
from rlmask.evaluate.metrics import SUMMARY_METRICS, classification_metrics, mean_ci
from rlmask.io import atomic_write_bytes, to_plain, write_json
from rlmask.models.weights import load_classifier
from rlmask.report.figures import plot_transfer
from rlmask.runtime import derive_seed, pick_device, resolve_amp
from rlmask.train.loop import make_optimizer
from rlmask.train.methods import FINETUNE_WARMUP  # the reference warms up over 7 of 10 epochs, then keeps the lr
from rlmask.train.schedules import make_scheduler
from rlmask.train.step import TrainStep
from rlmask.train.tasks import ClassifyTask

METRICS = SUMMARY_METRICS
MODES = ("linear", "finetune")
DEFAULT_EPOCHS = {"linear": 30, "finetune": 10}
DEFAULT_LR = {"linear": 1e-2, "finetune": 1e-3}  # Adam on cached features; SGD as the reference fine-tune
FINETUNE_MOMENTUM = 0.9
EVAL_BATCH_SIZE = 256
HEADS = ("linear", "reference")  # <<< Intelligent Masking's downstream head (issue 12)
REFERENCE_HEAD_EPOCHS, REFERENCE_HEAD_LR = 100, 1e-3  # the reference: Adam 1e-3 (200 epochs on 780 images)
REFERENCE_HEAD_DROPOUT = 0.3  # >>>


@dataclass
class TransferConfig:
    """Options of ``rlmask transfer``."""

    checkpoints: list[str] = option(
        [], "checkpoints to transfer: rlmask checkpoints, heated.pt or timm state dicts", metavar="CKPT"
    )
    data: list[str] = option([], "downstream data source(s), as for train", metavar="SPEC")
    label: list[str] = option(
        [],
        "names of the checkpoints in tables and plots, one per checkpoint (default: from their paths)",
        metavar="NAME",
    )
    shots: str = option("16,32,64,128,256", "training images per class: comma list of integers and/or 'all'")
    repeats: int = option(3, "repeats per shot count (different subsets, head init and order)")
    mode: str = option(
        "linear", "linear: frozen backbone + linear head; finetune: the whole network", choices=list(MODES)
    )
    head: str = option(
        "linear",
        "head on the frozen backbone (mode linear): 'linear', or 'reference' (Intelligent "
        "Masking's conv3x3-32, pool, FC 32-16-classes, dropout 0.3, class-weighted loss)",
        choices=list(HEADS),
    )
    epochs: int | None = option(None, "training epochs (default: 30 for linear, 10 for finetune)")
    batch_size: int = option(32, "training batch size")
    lr: float | None = option(None, "learning rate (default: 1e-2 Adam for linear, 1e-3 SGD for finetune)")
    weight_decay: float = option(1e-4, "weight decay")
    seed: int = option(0, "seed of the subsets, head initialisation, data order and augmentation")
    model: str | None = option(None, "architecture of plain state dicts (default: from config.json beside them)")
    small_stem: bool | None = option(
        None,
        "plain state dicts' stem: stride-1 without max-pool (default: from config.json beside them, else guessed "
        "from the first convolution; a deep-stem model such as resnet10t is taken as standard)",
    )
    image_size: int | None = option(None, "image side in pixels (default: the checkpoint's)", metavar="PX")
    eval_per_class: int | None = option(None, "evaluate on at most this many test images per class (one fixed subset)")
    out: str = option("runs/transfer", "output directory", metavar="DIR")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    amp: bool | None = option(None, "bf16 autocast (default: where the device computes bf16 natively, as in training)")
    cache_dir: str | None = option(None, "download/index cache")
    progress: bool = option(True, "show a progress bar")
    trust_checkpoint: bool = option(
        False,
        "load checkpoints that hold Python objects beyond tensors and plain data: "
        "this RUNS CODE from the file (only for files you trust)",
    )

    def validate(self) -> None:
        if not self.checkpoints:
            raise UserError("transfer: give at least one checkpoint")
        if self.mode not in MODES:
            raise UserError(f"--mode {self.mode}: choose linear or finetune")
        if self.head not in HEADS:
            raise UserError(f"--head {self.head}: choose from {', '.join(HEADS)}")
        if self.head == "reference" and self.mode != "linear":
            raise UserError("--head reference: the reference head sits on a frozen backbone; use --mode linear")
        if self.repeats < 1:
            raise UserError(f"--repeats {self.repeats}: must be at least 1")
        for name in ("epochs", "batch_size", "lr", "image_size", "eval_per_class"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"--{name.replace('_', '-')} {value}: must be positive")
        if self.weight_decay < 0:
            raise UserError(f"--weight-decay {self.weight_decay}: must not be negative")
        parse_shots(self.shots)
        if self.label and (len(self.label) != len(self.checkpoints) or len(set(self.label)) != len(self.label)):
            raise UserError(
                f"--label {' '.join(self.label)}: give one distinct name per checkpoint ({len(self.checkpoints)})"
            )


def parse_shots(text: str) -> list[int | str]:
    """``"64,16,all"`` -> ``[16, 64, "all"]``: distinct positive integers ascending, then ``"all"``."""
    numbers, whole = set(), False
    for token in (t.strip() for t in str(text).split(",")):
        if token.lower() == "all":
            whole = True
        elif token.isdigit() and int(token) > 0:
            numbers.add(int(token))
        else:
            raise UserError(f"--shots {text}: {token!r} is not a positive integer or 'all'")
    return sorted(numbers) + (["all"] if whole else [])


def subset_digest(index: torch.Tensor) -> str:
    """Short fingerprint of a subset's indices: equal digests, equal subsets."""
    return hashlib.sha1(index.to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()[:12]


def checkpoint_labels(paths: list[str]) -> list[str]:
    """Readable, unique labels: the last 3 path parts, more when two would collide, ``#k`` for repeats."""
    parts = [Path(p).parts for p in paths]
    for k in range(3, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    labels = ["/".join(p) for p in parts]
    return [lab if labels[:i].count(lab) == 0 else f"{lab}#{labels[:i].count(lab) + 1}" for i, lab in enumerate(labels)]


def _seeded_linear_(layer: nn.Linear, generator: torch.Generator) -> nn.Linear:
    """PyTorch's default Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from ``generator``."""
    bound = 1 / math.sqrt(layer.in_features)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


@torch.no_grad()
def extract_features(
    model: nn.Module,
    split: Split,
    transform: Augment,
    *,
    device: torch.device,
    batch_size: int = EVAL_BATCH_SIZE,
    amp: bool = False,
    pooled: bool = True,
) -> torch.Tensor:
    """Features float32 on the CPU of every sample of ``split``, in split order: the pooled pre-logit
    features (N, D), or with ``pooled=False`` the unpooled feature maps (N, D, h, w)."""
    model.eval()
    loader = BatchLoader(split, batch_size, shuffle=False, seed=0, drop_last=False, device=device)
    out = []
    for x_u8, _ in loader.epoch(0):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            feats = model.forward_features(transform(x_u8, None))  # (B, D, h, w)
            if pooled:
                feats = model.forward_head(feats, pre_logits=True)  # (B, D)
        out.append(feats.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def train_linear_head(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    generator: torch.Generator,
) -> nn.Linear:
    """A linear head trained with Adam on features (N, D) and labels (N,); its init and order come from ``generator``.

    Features are standardised with the subset's own statistics while training (Adam then needs no
    per-backbone learning rate); the standardisation is folded into the returned layer, which takes raw features.
    """
    mean, std = feats.mean(0), feats.std(0, unbiased=False).clamp_min(1e-6)  # (D,), (D,)
    z = (feats - mean) / std  # (N, D)
    head = _seeded_linear_(nn.Linear(feats.shape[1], num_classes), generator)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        order = torch.randperm(len(z), generator=generator)
        for i in range(0, len(z), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(head(z[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():  # W (z) + b = (W / std) f + (b - (W / std) mean)
        head.weight.div_(std)
        head.bias.sub_(head.weight @ mean)
    return head


# <<< Intelligent Masking's downstream head (issue 12)
class ReferenceHead(nn.Module):
    """Intelligent Masking's classifier on a frozen encoder: conv3x3 (D -> 32), global average pool, then
    dropout, FC 32 -> 16, ReLU, dropout, FC 16 -> classes (dropout 0.3 before each FC, as the reference)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = REFERENCE_HEAD_DROPOUT):
        super().__init__()
        self.conv = nn.Conv2d(in_features, 32, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(32, 16), nn.Linear(16, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) feature maps -> logits (B, classes)."""
        z = self.conv(maps).mean((2, 3))  # (B, 32)
        return self.fc2(self.dropout(F.relu(self.fc1(self.dropout(z)))))


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,) inverse-frequency weights n / (K n_k) of the training labels (0 for absent classes)."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    return torch.where(counts > 0, len(labels) / (num_classes * counts.clamp_min(1)), torch.zeros(()))


def train_reference_head(
    maps: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
) -> nn.Module:
    """A ``ReferenceHead`` trained with Adam and a class-weighted cross-entropy on cached maps (N, D, h, w);
    its init, order and dropout come from ``seed``. Maps are standardised per channel with the subset's own
    statistics (folded into the returned module's first step), as the linear probe's features."""
    mean = maps.mean((0, 2, 3), keepdim=True)[0]  # (D, 1, 1)
    std = maps.std((0, 2, 3), keepdim=True)[0].clamp_min(1e-6)
    z = (maps - mean) / std
    generator = torch.Generator().manual_seed(seed)
    weights = class_weights(labels, num_classes)
    with torch.random.fork_rng(devices=[]):  # the head's init and dropout from the seed, global RNG untouched
        torch.manual_seed(seed)
        head = ReferenceHead(maps.shape[1], num_classes)
        opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
        head.train()
        for _ in range(epochs):
            order = torch.randperm(len(z), generator=generator)
            for i in range(0, len(z), batch_size):
                idx = order[i : i + batch_size]
                loss = F.cross_entropy(head(z[idx]), labels[idx], weight=weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    head.eval()
    return nn.Sequential(_Standardise(mean, std), head)


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return (maps - self.mean) / self.std


# >>>


def finetune_copy(
    base: nn.Module,
    train: Split,
    num_classes: int,
    transform: Augment,
    cfg: TransferConfig,
    seed: int,
    device: torch.device,
) -> nn.Module:
    """A copy of ``base`` with a new seeded head, trained whole on ``train`` (SGD, warm-up, augmentation)."""
    model = copy.deepcopy(base)
    model.reset_classifier(num_classes)
    _seeded_linear_(model.get_classifier(), torch.Generator().manual_seed(seed))
    model.to(device).train()
    # Full batches only: a batch of one would break BatchNorm, and tiny subsets are smaller than batch_size.
    loader = BatchLoader(train, min(cfg.batch_size, len(train)), shuffle=True, seed=seed, drop_last=True, device=device)
    total = len(loader) * cfg.epochs
    opt = make_optimizer(model.parameters(), "sgd", cfg.lr, FINETUNE_MOMENTUM, cfg.weight_decay)
    sched = make_scheduler(
        opt, total, schedule="constant", warmup_steps=round(FINETUNE_WARMUP * total), warmup_start=0.01
    )
    agent, aug_gen = MaskAgent(), torch.Generator().manual_seed(seed + 1)
    step = TrainStep(model, ClassifyTask().loss, opt, device=device, amp=cfg.amp, total_steps=total)
    for epoch in range(cfg.epochs):
        for batch, (x_u8, y) in enumerate(loader.epoch(epoch)):
            x = transform(x_u8, aug_gen)  # (B, C, S, S) augmented, normalised
            agent.train_step(step.begin(epoch, epoch * len(loader) + batch), x, y)
            sched.step()
    return model.eval()


def _downstream(cfg: TransferConfig, meta: dict, cache: dict) -> tuple[Pool, str]:
    """The downstream pool at the checkpoint's size and channels (built once per pair) and its evaluation split."""
    key = (cfg.image_size or meta.get("image_size"), meta.get("channels"))
    if key not in cache:
        pool = build_pool(cfg.data, key[0], key[1], cache_dir=cfg.cache_dir)
        split = "test" if "test" in pool.splits else "val"
        if cfg.eval_per_class:  # one fixed subset (seed 0), the same for every checkpoint
            pool = pool.subsample(split, cfg.eval_per_class, seed=0)
        cache[key] = (pool, split)
    return cache[key]


def draw_subsets(labels: torch.Tensor, shots: list[int | str], repeats: int, seed: int) -> dict:
    """{(shots, repeat): (sorted train indices, run seed)}: from the labels (N,) only, so every checkpoint
    gets the same subsets, and the same run seed (head init, data order, augmentation) for each."""
    subsets = {}
    for n in shots:
        code = 0 if n == "all" else n
        for r in range(repeats):
            gen = torch.Generator().manual_seed(derive_seed(seed, code, r, 0, wide=True))
            subsets[(n, r)] = (
                class_balanced_subset(labels, None if n == "all" else n, gen),
                derive_seed(seed, code, r, 1, wide=True),
            )
    return subsets


def _summary(repeats: list[dict]) -> dict:
    out = {"repeats": repeats}
    for k in METRICS:
        stat = mean_ci([r[k] for r in repeats], bounds=(0.0, 1.0))  # every METRICS entry lies in [0, 1]
        out[k] = {"mean": stat["mean"], "ci": [stat["low"], stat["high"]], "std": stat["std"], "n": stat["n"]}
    return out


def _transfer_checkpoint(
    cfg: TransferConfig, base: nn.Module, meta: dict, pool: Pool, split: str, subsets: dict, device: torch.device, step
) -> tuple[dict, dict]:
    """Scores of one checkpoint for every (shots, repeat): ({shots: summary}, facts about the backbone)."""
    train, test, k = pool.splits["train"], pool.splits[split], len(pool.classes)
    eval_tf = Augment(pool.image_size, train=False, mean=meta["mean"], std=meta["std"])
    train_tf = Augment(pool.image_size, train=True, mean=meta["mean"], std=meta["std"])
    info = {"model": meta.get("model"), "image_size": pool.image_size, "channels": pool.channels}
    if cfg.mode == "linear":  # features once: only of the training images some subset uses
        base.to(device)
        needed = torch.cat([idx for idx, _ in subsets.values()]).unique()  # (U,) sorted
        pooled = cfg.head != "reference"  # Intelligent Masking's head convolves the feature maps
        train_feats = extract_features(base, train.subset(needed), eval_tf, device=device, amp=cfg.amp, pooled=pooled)
        test_feats = extract_features(base, test, eval_tf, device=device, amp=cfg.amp, pooled=pooled)  # (T, D[, h, w])
        base.cpu()
        info["feature_dim"] = train_feats.shape[1]
    by_shots: dict[str, list] = {}
    for (n, r), (idx, seed) in subsets.items():
        if cfg.mode == "linear" and cfg.head == "reference":  # <<< Intelligent Masking's head
            head = train_reference_head(
                train_feats[torch.searchsorted(needed, idx)],
                train.labels[idx],
                k,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                seed=seed,
            )
            with torch.no_grad():
                probs = head(test_feats).softmax(1)  # (T, K)
            scores = classification_metrics(probs.numpy(), test.labels.numpy(), pool.classes)  # >>>
        elif cfg.mode == "linear":
            head = train_linear_head(
                train_feats[torch.searchsorted(needed, idx)],
                train.labels[idx],
                k,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
                generator=torch.Generator().manual_seed(seed),
            )
            with torch.no_grad():
                probs = head(test_feats).softmax(1)  # (T, K)
            scores = classification_metrics(probs.numpy(), test.labels.numpy(), pool.classes)
        else:
            model = finetune_copy(base, train.subset(idx), k, train_tf, cfg, seed, device)
            scores = evaluate_split(
                model, test, pool.classes, eval_tf, batch_size=EVAL_BATCH_SIZE, device=device, amp=cfg.amp
            )
        by_shots.setdefault(str(n), []).append(
            {"repeat": r, "n_train": len(idx), "subset_digest": subset_digest(idx), **{m: scores[m] for m in METRICS}}
        )
        step(f"n={n} #{r}")
    return {n: _summary(reps) for n, reps in by_shots.items()}, info


def run_transfer(cfg: TransferConfig) -> dict:
    """Transfer every checkpoint at every shot count; write transfer.json, transfer.md and transfer.png in ``cfg.out``.

    Returns transfer.json's content: ``{"config", "checkpoints": [labels], "checkpoint_info": {label: ...},
    "split", "results": {label: {shots: {"repeats": [...], metric: {"mean", "ci", "std", "n"}}}}}``.
    """
    cfg.validate()
    if cfg.head == "reference":  # <<< Intelligent Masking's head: its own defaults >>>
        cfg = dataclasses.replace(cfg, epochs=cfg.epochs or REFERENCE_HEAD_EPOCHS, lr=cfg.lr or REFERENCE_HEAD_LR)
    cfg = dataclasses.replace(cfg, epochs=cfg.epochs or DEFAULT_EPOCHS[cfg.mode], lr=cfg.lr or DEFAULT_LR[cfg.mode])
    shots = parse_shots(cfg.shots)
    device = pick_device(cfg.device)
    cfg = dataclasses.replace(cfg, amp=resolve_amp(cfg.amp, device))  # a bool from here on, recorded as used
    labels = list(cfg.label) if cfg.label else checkpoint_labels(cfg.checkpoints)
    # Read every checkpoint first: a bad one fails the command before any work is done.
    loaded = [
        load_classifier(path, cfg.model, option="checkpoint", trust=cfg.trust_checkpoint, small_stem=cfg.small_stem)
        for path in cfg.checkpoints
    ]
    pools: dict = {}
    subsets: dict = {}
    results, info = {}, {}
    bar = tqdm(
        total=len(loaded) * len(shots) * cfg.repeats,
        desc="transfer",
        unit="run",
        disable=None if cfg.progress else True,
    )
    for label, path, (base, meta) in zip(labels, cfg.checkpoints, loaded):
        pool, split = _downstream(cfg, meta, pools)
        subsets = subsets or draw_subsets(pool.splits["train"].labels, shots, cfg.repeats, cfg.seed)

        def step(what: str, label=label) -> None:
            bar.set_postfix_str(f"{label} {what}")
            bar.update(1)

        results[label], facts = _transfer_checkpoint(cfg, base, meta, pool, split, subsets, device, step)
        info[label] = {"path": str(path), **facts}
    bar.close()

    result = {
        "config": to_plain(cfg),
        "checkpoints": labels,
        "checkpoint_info": info,
        "split": split,
        "results": results,
    }
    write_transfer(result, Path(cfg.out))
    return result


def write_transfer(result: dict, out: Path) -> None:
    """transfer.json, transfer.png and transfer.md of a transfer run's result, in ``out``."""
    write_json(out / "transfer.json", result)
    plot_transfer(result["results"], out / "transfer.png")
    atomic_write_bytes(out / "transfer.md", render_markdown(result).encode())


def _fmt(stat: dict) -> str:
    if stat["mean"] is None:
        return "n/a"
    low, high = stat["ci"]
    if low is None or high is None:  # one repeat: no interval
        return f"{stat['mean']:.4f}"
    return f"{stat['mean']:.4f} [{low:.4f}, {high:.4f}]"


def render_markdown(result: dict) -> str:
    """transfer.md: one table per checkpoint (rows: shots; columns: metrics as mean [95% interval])."""
    cfg = result["config"]
    head = " + reference head" if cfg.get("head") == "reference" else ""  # <<< >>>
    lines = [
        f"# Transfer to {', '.join(cfg['data'])} ({cfg['mode']}{head}, {cfg['epochs']} epochs)",
        "",
        f"{result['split'].capitalize()} split; mean [95% t-interval] over {cfg['repeats']} repeat(s). "
        "Subsets are identical for every checkpoint; `images` is the actual training count "
        "(classes with fewer images give all they have).",
        "",
    ]
    for label, by_shots in result["results"].items():
        lines += [
            f"## {label}",
            "",
            "| shots | images | " + " | ".join(METRICS) + " |",
            "|---|---|" + "---|" * len(METRICS),
        ]
        for n, entry in by_shots.items():
            counts = "/".join(str(c) for c in sorted({r["n_train"] for r in entry["repeats"]}))
            lines.append(f"| {n} | {counts} | " + " | ".join(_fmt(entry[m]) for m in METRICS) + " |")
        lines.append("")
    lines += ["## Macro-F1 against training images per class", "", "![](transfer.png)", ""]
    return "\n".join(lines)
