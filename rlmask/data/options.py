"""Options of reading data as it sits on disk: seeded splits, exclusions, manifests' bad rows, DICOM windows.

One dataclass, shared by ``rlmask train`` (whose config carries the same fields, see :func:`data_option`),
``rlmask data info`` and ``rlmask data pack``. :func:`rlmask.data.build_pool` takes it as ``options``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from rlmask.config import option
from rlmask.errors import UserError


@dataclass
class DataOptions:
    """How image folders and CSV/TSV manifests are read (in-memory sources ignore these)."""

    val_fraction: float = option(
        0.1,
        "share of each class held out for validation when the data has no val "
        "split (of the training files when it has a test split)",
    )
    test_fraction: float = option(
        0.2,
        "share of each class held out for testing when the data has neither a val nor a test split (0: no test split)",
    )
    split_seed: int | None = option(None, "seed of that split (default: the run's --seed)")
    exclude: list[str] = option(
        [],
        "leave out files matching this glob, case-insensitive, matched against the "
        "path below the data folder and each trailing part of it (repeatable: "
        "--exclude '*_mask.png' 'notumor/*')",
        metavar="GLOB",
    )
    keep_masks: bool = option(
        False,
        "use files named like segmentation masks (*_mask.*, *_mask_N.*, *_seg.*) as "
        "images; by default they are left out with a warning",
    )
    skip_bad_rows: bool = option(
        False,
        "drop manifest rows whose file is missing or label empty (counted in the "
        "log) instead of stopping with an error",
    )
    window: str | None = option(
        None,
        "DICOM intensity window CENTER,WIDTH after rescale slope/intercept "
        "(default: the file's own window, else its min-max)",
        metavar="C,W",
    )

    @classmethod
    def from_config(cls, cfg: Any) -> DataOptions:
        """The options carried, under the same names, by another config (e.g. ``TrainConfig``)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)})

    def validate(self) -> None:
        """Raise UserError for out-of-range fractions or an unreadable window."""
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise UserError(f"--{name.replace('_', '-')} {value}: must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise UserError(
                f"--val-fraction {self.val_fraction} and --test-fraction {self.test_fraction}: "
                "together they must leave some training images (sum below 1)"
            )
        for pattern in self.exclude:
            if not pattern.strip():
                raise UserError("--exclude: empty pattern")
        self.window_values()

    def window_values(self) -> tuple[float, float] | None:
        """``--window`` as (center, width), or None when the files' own windows are used."""
        if self.window is None or str(self.window).strip().lower() in ("", "none", "auto", "file"):
            return None
        try:
            center, width = (float(v) for v in str(self.window).split(","))
        except ValueError:
            raise UserError(f"--window {self.window}: expected CENTER,WIDTH, e.g. --window 40,400") from None
        if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
            raise UserError(f"--window {self.window}: the width must be positive (CENTER,WIDTH)")
        return center, width


def data_option(name: str) -> Any:
    """A dataclass field with the default and help text of ``DataOptions.<name>``.

    Lets another config (``TrainConfig``) carry the data options as flat flags without repeating them.
    """
    f = DataOptions.__dataclass_fields__[name]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return option(default, **f.metadata)


DATA_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(DataOptions))
