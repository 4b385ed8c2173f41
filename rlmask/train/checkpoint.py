"""Checkpoints: an explicit schema, atomic writes, and loading with one-line errors.

Schema of a training checkpoint (``last.pt``, ``best.pt``)::

    {"kind": "rlmask", "model": state_dict, "optimizer": ..., "scheduler": ..., "epoch": int,
     "step": int, "batch": int, "config": dict, "rng_state": dict, "metrics": dict,
     "agent": state_dict | None, "agent_optimizer": ..., "agent_scheduler": ...,
     "data": {"classes", "channels", "image_size", "mean", "std"}, "model_info": {"name", "small_stem"}}

``epoch`` is the epoch in progress and ``batch`` the number of its batches already done, so a
checkpoint written mid-epoch resumes at the next batch.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from rlmask.errors import UserError


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` into memory, then an atomic write: a kill never leaves a torn checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Load a checkpoint or a plain state dict on the CPU; bad files raise a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise UserError(f"{what} {path}: not a readable PyTorch checkpoint ({reason})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{what} {path}: expected a dict (checkpoint or state dict), found {type(obj).__name__}")
    return obj


def capture_rng() -> dict[str, Any]:
    """The global torch RNG (CPU and CUDA). Data order, crops and masks have generators of their own
    (derived from seed and epoch, or kept in the agent's state); this covers anything else (dropout)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
