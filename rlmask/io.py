"""The ground floor for files: atomic writes, JSON and JSON-lines, checkpoints on disk.

Everything rlmask writes goes through ``atomic_write_bytes`` (a temporary file in the same folder, then
a rename), so a crash or a full disk never leaves a torn file where a good one stood.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlmask.errors import UserError, reason

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
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


RUN_FILES = ("metrics.json", "log.jsonl", "last.pt", "best.pt", "heated.pt", "policy.pt", "predictions.npz")
LOGGER_FILES = ("steps.jsonl", "steps.csv", "epochs.csv")  # and the folder tensorboard/ (rlmask.train.loggers)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files of atomic writes that a killed process left in ``folder``."""
    for tmp in folder.glob(".*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


def next_version(out: Path) -> Path:
    """``out/version_N`` for the smallest N >= 1 whose folder does not exist yet (Lightning-style versions)."""
    n = 1
    while (out / f"version_{n}").exists():
        n += 1
    return out / f"version_{n}"


def prepare_run_folder(
    out: str | Path, *, overwrite: bool = False, resume: bool = False, option: str = "--out"
) -> Path:
    """Check and create a run's output folder before any work, with one-line errors; returns the folder.

    A path that is a file, a folder that cannot be created or written, and a folder holding a finished
    run (metrics.json) are refused; ``overwrite`` removes the finished run's files first, ``resume``
    continues it (``--versioned`` picks ``next_version`` before). Temporaries left by a killed write are removed.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out}: exists and is not a folder")
    if (out / "metrics.json").exists() and not resume:
        if not overwrite:
            raise UserError(
                f"{option} {out}: holds a finished run (metrics.json); choose another {option}, "
                "add --overwrite to replace it, --versioned to write into a version_N folder inside it, "
                "or --resume to continue it"
            )
        for name in RUN_FILES + LOGGER_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)  # the replaced run's event files
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{option} {out}: cannot write there ({err.strerror or err})") from None
    remove_stale_temporaries(out)
    return out


def to_plain(obj: Any) -> Any:
    """Dataclasses, paths and tuples as JSON-able plain data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename), so a crash never leaves half a file."""
    atomic_write_bytes(Path(path), (json.dumps(to_plain(data), indent=2) + "\n").encode())


def read_json(path: str | Path, what: str = "file") -> Any:
    """A JSON file's content; an unreadable or malformed file is a one-line UserError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{what} {path}: not readable JSON ({reason(err)}); remove or repair it") from None


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file (log.jsonl); a missing file is empty and a torn or non-object
    line (a write cut by a kill) is skipped."""
    path = Path(path)
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_npz(path: str | Path, arrays: dict[str, Any]) -> None:
    """Numeric arrays as an .npz file, atomically (read back with ``np.load(path, allow_pickle=False)``)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(Path(path), buffer.getvalue())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` into memory, then an atomic write: a kill never leaves a torn checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


TRUST_FLAG = "--trust-checkpoint"


def load_checkpoint(path: str | Path, what: str = "checkpoint", trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint or a plain state dict on the CPU; bad files raise a one-line UserError.

    Never runs code from the file unless ``trust``: torch's ``weights_only`` unpickler admits tensors and
    plain data only (all that rlmask writes); a file that needs more is refused, naming ``--trust-checkpoint``.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise UserError(f"{what} {path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if not trust and "weights_only" in str(err).replace(" ", "_").lower():
            found = re.search(r"GLOBAL (\S+)|global (\S+)|(\w+(?:\.\w+)+) was not an allowed", str(err))
            name = next((g for g in found.groups() if g), None) if found else None
            raise UserError(
                f"{what} {path}: refused: it holds Python objects{f' ({name})' if name else ''} beyond "
                f"tensors and plain data, and loading it would run their code; {TRUST_FLAG} loads it "
                "anyway (only for files you trust)"
            ) from None
        why = reason(err)
        raise UserError(f"{what} {path}: not a readable PyTorch checkpoint ({why})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        why = reason(err)
        raise UserError(f"{what} {path}: not a readable PyTorch checkpoint ({why})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{what} {path}: expected a dict (checkpoint or state dict), found {type(obj).__name__}")
    return obj
