"""PNG figures of runs and comparisons (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_training_curves(curves: dict[str, list[list[dict]]], path: Path, boundary: int | None = None) -> Path:
    """Validation macro-F1 and training cross-entropy per epoch: one line per method (mean over seeds,
    band = min..max over seeds). ``curves[method]`` holds one list of log.jsonl records per seed;
    ``boundary`` draws a dashed line where pretraining ends and fine-tuning starts."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, seeds in curves.items():
        length = min(len(s) for s in seeds)
        if length == 0:
            continue
        epochs = np.arange(1, length + 1)
        for ax, key in zip(axes, ("val/macro_f1", "losses/ce")):
            values = np.array([[r.get(key, np.nan) for r in s[:length]] for s in seeds], dtype=float)
            mean = np.nanmean(values, axis=0)
            (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=method)
            if len(seeds) > 1:
                ax.fill_between(epochs, np.nanmin(values, 0), np.nanmax(values, 0), color=line.get_color(), alpha=0.15)
    for ax, title in zip(axes, ("validation macro-F1 (clean images)", "training cross-entropy")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if boundary:
            ax.axvline(boundary + 0.5, color="grey", ls="--", lw=1)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def plot_mask_gallery(images: np.ndarray, rows: dict[str, np.ndarray], path: Path, titles: list[str] | None = None) -> Path:
    """Images (N, H, W[, 3]) in [0, 1] in the first row, then one row per mask set (N, H, W) in [0, 1]
    and a row of the masked images for each."""
    n = images.shape[0]
    n_rows = 1 + 2 * len(rows)
    fig, axes = plt.subplots(n_rows, n, figsize=(1.6 * n, 1.7 * n_rows), squeeze=False)
    grey = images.ndim == 3
    for j in range(n):
        axes[0, j].imshow(images[j], cmap="gray" if grey else None, vmin=0, vmax=1)
        if titles:
            axes[0, j].set_title(titles[j], fontsize=7)
    for i, (label, masks) in enumerate(rows.items()):
        for j in range(n):
            axes[1 + 2 * i, j].imshow(masks[j], cmap="magma", vmin=0, vmax=1)
            masked = images[j] * (masks[j] if grey else masks[j][..., None])
            axes[2 + 2 * i, j].imshow(masked, cmap="gray" if grey else None, vmin=0, vmax=1)
        axes[1 + 2 * i, 0].set_ylabel(f"{label}\nmask", fontsize=8)
        axes[2 + 2 * i, 0].set_ylabel(f"{label}\nmasked", fontsize=8)
    axes[0, 0].set_ylabel("image", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)
