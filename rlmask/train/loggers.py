"""Experiment loggers of a training run (``--logger``, repeatable): what a user watches besides log.jsonl.

log.jsonl (one record per epoch) is always written: comparisons and reports read it. Each logger adds:

- ``jsonl``: steps.jsonl, one record of scalars every ``--log-every`` steps (losses, lr, policy diagnostics);
- ``csv``: epochs.csv (the epoch records: losses, lr, validation metrics) and steps.csv (the step records),
  one column per scalar (empty where a row has none, e.g. epochs that were not validated);
- ``tensorboard``: an event file under tensorboard/ (``torch.utils.tensorboard.SummaryWriter``; the optional
  ``tensorboard`` package, ``pip install 'rlmask[tensorboard]'``): step scalars as ``step/NAME``, epoch
  scalars as ``epoch/NAME`` (x axis: the optimiser step), and per epoch a grid of fixed validation images
  under the agent's masks (rows: image, mask, masked image).

A resumed run continues the files exactly: rows after the checkpoint's step are dropped (TensorBoard: its
``purge_step``) and written again by the resumed steps. Files are rewritten atomically at each epoch end
and mid-epoch checkpoint, so a crash loses at most the rows after the last checkpoint, which the resume
writes again. Only the first process logs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import torch

from rlmask.errors import UserError
from rlmask.io import atomic_write_bytes, read_jsonl

LOGGERS = ("jsonl", "csv", "tensorboard")


def check_loggers(names: list[str]) -> None:
    """One-line errors for unknown names, and for tensorboard without its package, before any work."""
    for name in names:
        if name not in LOGGERS:
            raise UserError(f"--logger {name}: unknown logger; choose from {', '.join(LOGGERS)}")
    if "tensorboard" in names:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise UserError(
                "--logger tensorboard: needs the tensorboard package (pip install 'rlmask[tensorboard]')"
            ) from None


def _scalars(record: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in record.items()
        if k not in ("epoch", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def _csv_bytes(rows: list[dict]) -> bytes:
    columns = ["epoch", "step"]
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (int(v) if k in ("epoch", "step") else v) for k, v in row.items()})
    return buffer.getvalue().encode()


class _Table:
    """Step and epoch rows kept in memory and rewritten whole (atomically) on ``flush``."""

    def __init__(self, out: Path, fmt: str, start_step: int, start_epoch: int):
        self.out, self.fmt = out, fmt
        self.steps_path = out / f"steps.{fmt}"
        self.epochs_path = out / "epochs.csv" if fmt == "csv" else None  # jsonl's epochs are log.jsonl
        read = _read_csv if fmt == "csv" else lambda p: read_jsonl(p) if p.is_file() else []
        self.steps = [r for r in read(self.steps_path) if r.get("step", math.inf) <= start_step]
        self.epochs = (
            [r for r in read(self.epochs_path) if r.get("epoch", math.inf) < start_epoch] if self.epochs_path else []
        )

    def log_step(self, step: int, epoch: int, scalars: dict) -> None:
        self.steps.append({"epoch": epoch, "step": step, **scalars})

    def log_epoch(self, record: dict) -> None:
        if self.epochs_path is not None:
            self.epochs.append({"epoch": record["epoch"], "step": record["step"], **_scalars(record)})

    def log_images(self, *args) -> None:
        pass

    def flush(self) -> None:
        if self.fmt == "csv":
            atomic_write_bytes(self.steps_path, _csv_bytes(self.steps))
            atomic_write_bytes(self.epochs_path, _csv_bytes(self.epochs))
        else:
            atomic_write_bytes(self.steps_path, "".join(json.dumps(r) + "\n" for r in self.steps).encode())

    def close(self) -> None:
        self.flush()


class _TensorBoard:
    def __init__(self, out: Path, start_step: int, resumed: bool):
        from torch.utils.tensorboard import SummaryWriter

        # Steps up to start_step are in the checkpoint's past; the resumed run logs start_step + 1 on.
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if resumed else None)

    def log_step(self, step: int, epoch: int, scalars: dict) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(f"step/{k}", v, step)

    def log_epoch(self, record: dict) -> None:
        for k, v in _scalars(record).items():
            self.writer.add_scalar(f"epoch/{k}", v, record["step"])

    def log_images(self, tag: str, grid: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, grid, step, dataformats="CHW")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Loggers:
    """The run's loggers as one: ``log_step``, ``log_epoch``, ``log_images``, ``flush``, ``close``."""

    def __init__(self, names: list[str], out: Path, start_step: int = 0, start_epoch: int = 0, resumed: bool = False):
        check_loggers(names)
        self.items = []
        for name in dict.fromkeys(names):
            if name == "tensorboard":
                self.items.append(_TensorBoard(out, start_step, resumed))
            else:
                self.items.append(_Table(out, name, start_step, start_epoch))

    def __bool__(self) -> bool:
        return bool(self.items)

    def log_step(self, step: int, epoch: int, logs: dict[str, torch.Tensor], lr: float) -> None:
        """Scalars of one step (device tensors: read here, every ``--log-every`` steps only)."""
        if not self.items:
            return
        keys = sorted(logs)
        values = torch.stack([logs[k].detach().float().reshape(()) for k in keys]).tolist() if keys else []
        scalars = dict(zip(keys, values)) | {"lr": lr}
        for item in self.items:
            item.log_step(step, epoch, scalars)

    def log_epoch(self, record: dict) -> None:
        for item in self.items:
            item.log_epoch(record)

    def log_images(self, tag: str, grid: torch.Tensor, step: int) -> None:
        for item in self.items:
            item.log_images(tag, grid, step)

    def flush(self) -> None:
        for item in self.items:
            item.flush()

    def close(self) -> None:
        for item in self.items:
            item.close()


def mask_grid(images: torch.Tensor, masks: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """(3, 3*(H+pad), n*(W+pad)) in [0, 1]: rows image, mask, masked image of images (n, C, H, W) in [0, 1]
    and keep-masks (n, 1 or C, H, W) in [0, 1]."""
    rgb = images.float().clamp(0, 1)
    rgb = rgb.expand(-1, 3, -1, -1) if rgb.shape[1] == 1 else rgb[:, :3]
    keep = masks.float().clamp(0, 1).mean(1, keepdim=True).expand(-1, 3, -1, -1)
    rows = [rgb, keep, rgb * keep]  # each (n, 3, H, W)
    n, _, h, w = rgb.shape
    grid = torch.ones(3, len(rows) * (h + pad), n * (w + pad))
    for r, row in enumerate(rows):
        for i in range(n):
            grid[:, r * (h + pad) : r * (h + pad) + h, i * (w + pad) : i * (w + pad) + w] = row[i].cpu()
    return grid
