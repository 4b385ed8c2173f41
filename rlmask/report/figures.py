"""PNG figures of runs and comparisons (matplotlib, headless Agg backend)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from rlmask.io import atomic_write_bytes  # noqa: E402

# Class names and method names are data, not markup: "$x^{$" must be drawn as written, never parsed.
matplotlib.rcParams["text.parse_math"] = False


def drawable(text) -> str:
    """A name as drawable text: file names that are not valid UTF-8 (kept by Python as surrogate escapes)
    get a replacement character instead of breaking the font renderer."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _save(fig, path: Path) -> Path:
    """Render to memory, then write atomically through a temporary file of a unique name: two processes
    that draw the same figure (two workers finishing one comparison) must not rename each other's file."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


LINE_STYLES = ("-", (0, (5, 2)), (0, (1, 1.5)))  # solid, dashed, dotted (the pretraining boundary is grey "--")
MARKERS = ("o", "s", "^")


def plot_training_curves(curves: dict[str, list[list[dict]]], path: Path, boundary: int | None = None) -> Path:
    """Validation macro-F1 and training cross-entropy per epoch: one line per method (mean over seeds,
    band = min..max over seeds). ``curves[method]`` holds one list of log.jsonl records per seed;
    ``boundary`` draws a dashed line where pretraining ends and fine-tuning starts."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (method, seeds) in enumerate(curves.items()):
        length = min(len(s) for s in seeds)
        if length == 0:
            continue
        epochs = np.arange(1, length + 1)
        # the colour cycle has 10 colours: past them, another line style and marker, so that no two methods
        # look alike (a method validated once, e.g. a self-supervised one, is a marker alone)
        cycle = i // 10 % len(LINE_STYLES)
        style = {"color": f"C{i % 10}", "ls": LINE_STYLES[cycle], "marker": MARKERS[cycle], "ms": 3 + cycle}
        for ax, key in zip(axes, ("val/macro_f1", "losses/ce")):
            values = np.array([[r.get(key, np.nan) for r in s[:length]] for s in seeds], dtype=float)
            # Epochs without the key stay blank (a self-supervised pretraining); those with it are joined (a
            # run that validates every N epochs, --val-every).
            seen = ~np.isnan(values).all(0)
            (line,) = ax.plot(epochs[seen], np.nanmean(values[:, seen], 0), label=method, **style)
            if len(seeds) > 1:
                low, high = np.nanmin(values[:, seen], 0), np.nanmax(values[:, seen], 0)
                ax.fill_between(epochs[seen], low, high, color=line.get_color(), alpha=0.15)
    for ax, title in zip(axes, ("validation macro-F1 (clean images)", "training cross-entropy")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if boundary:
            ax.axvline(boundary + 0.5, color="grey", ls="--", lw=1)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the panels, not on a curve
    return _save(fig, path)


def plot_mask_gallery(
    images: np.ndarray,
    rows: dict[str, np.ndarray],
    path: Path,
    titles: list[str] | None = None,
    extra: dict[str, dict[str, np.ndarray]] | None = None,
) -> Path:
    """Images (N, H, W[, 3]) in [0, 1] in the first row, then for each mask set (N, H, W) in [0, 1] its
    ``extra`` rows (``{label: {row name: (N, H, W) in [0, 1]}}``, e.g. APGA's probability map), the mask and
    the masked images."""
    n = images.shape[0]
    extra = extra or {}
    n_rows = 1 + sum(2 + len(extra.get(label, {})) for label in rows)
    fig, axes = plt.subplots(n_rows, n, figsize=(1.6 * n, 1.7 * n_rows), squeeze=False)
    grey = images.ndim == 3
    for j in range(n):
        axes[0, j].imshow(images[j], cmap="gray" if grey else None, vmin=0, vmax=1)
        if titles:
            axes[0, j].set_title(drawable(titles[j]), fontsize=7)
    row = 1
    for label, masks in rows.items():
        for name, values in extra.get(label, {}).items():
            for j in range(n):
                axes[row, j].imshow(values[j], cmap="viridis", vmin=0, vmax=1)
            axes[row, 0].set_ylabel(drawable(f"{label}\n{name}"), fontsize=8)
            row += 1
        for j in range(n):
            axes[row, j].imshow(masks[j], cmap="magma", vmin=0, vmax=1)
            masked = images[j] * (masks[j] if grey else masks[j][..., None])
            axes[row + 1, j].imshow(masked, cmap="gray" if grey else None, vmin=0, vmax=1)
        axes[row, 0].set_ylabel(f"{label}\nmask", fontsize=8)
        axes[row + 1, 0].set_ylabel(f"{label}\nmasked", fontsize=8)
        row += 2
    axes[0, 0].set_ylabel("image", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def plot_image_rows(
    rows: dict[str, np.ndarray], path: Path, cmaps: dict[str, str] | None = None, title: str | None = None
) -> Path:
    """One row per entry of ``rows`` (label -> (N, H, W[, 3]) in [0, 1]), the N images side by side; grey
    images in ``gray`` unless ``cmaps`` names another colour map for that row."""
    labels = list(rows)
    n = len(rows[labels[0]])
    fig, axes = plt.subplots(len(labels), n, figsize=(1.6 * n, 1.7 * len(labels)), squeeze=False)
    for i, label in enumerate(labels):
        for j in range(n):
            img = rows[label][j]
            axes[i, j].imshow(img, cmap=(cmaps or {}).get(label, "gray") if img.ndim == 2 else None, vmin=0, vmax=1)
        axes[i, 0].set_ylabel(label, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_transfer(results: dict[str, dict[str, dict]], path: Path, metric: str = "macro_f1") -> Path:
    """Few-shot transfer: ``metric`` against training images per class (log2 axis), one line per checkpoint
    with its 95% interval as a band. ``results[label][shots]`` is an entry of transfer.json's results:
    ``{metric: {"mean", "ci": [low, high]}, "repeats": [{"n_train", ...}]}``, shots an integer or "all";
    "all" (the whole training split) sits one octave after the largest integer, labelled "all (N)"."""
    numbers = sorted({int(k) for by_shots in results.values() for k in by_shots if k != "all"})
    x_all = float(np.log2(numbers[-1])) + 1 if numbers else 0.0
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ticks: dict[float, str] = {}
    for label, by_shots in results.items():
        points = []  # (x, mean, low, high)
        for key, entry in by_shots.items():
            stat = entry[metric]
            if stat["mean"] is None:
                continue
            x = x_all if key == "all" else float(np.log2(int(key)))
            ticks[x] = f"all ({entry['repeats'][0]['n_train']})" if key == "all" else str(key)
            low, high = stat["ci"]
            if low is None or high is None:  # one repeat: no interval, the band collapses onto the line
                low = high = stat["mean"]
            points.append((x, stat["mean"], low, high))
        if not points:
            continue
        xs, mean, low, high = np.array(sorted(points), dtype=float).T
        (line,) = ax.plot(xs, mean, marker="o", ms=4, label=label)
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.18)
    ax.set_xticks(list(ticks), list(ticks.values()))
    ax.set_xlabel("training images per class (log2 scale)")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (mean, 95% interval)")
    ax.grid(alpha=0.3)
    if ticks:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_differences(paired: dict[str, dict[str, dict]], path: Path, title: str = "") -> Path:
    """Method - plain per method, one panel per metric: the difference as a dot, its 95% interval as a bar,
    a zero line, and the verdict in words beside each method. ``paired[method][metric]`` holds
    {"mean", "low", "high", "verdict"} (comparison.json's "paired" entries)."""
    methods = list(paired)
    metrics = list(next(iter(paired.values()))) if paired else []
    fig, axes = plt.subplots(
        1,
        max(len(metrics), 1),
        figsize=(3.6 * max(len(metrics), 1), 0.55 * len(methods) + 1.6),
        sharey=True,
        squeeze=False,
    )
    for ax, metric in zip(axes[0], metrics):
        for i, method in enumerate(methods):
            stat = paired[method][metric]
            if stat["mean"] is None:
                continue
            colour = {"better": "#1b7f3b", "worse": "#b3261e"}.get(stat["verdict"], "#4a5568")
            if stat["low"] is not None:
                ax.plot([stat["low"], stat["high"]], [i, i], color=colour, lw=2.5, solid_capstyle="butt")
            ax.plot([stat["mean"]], [i], "o", color=colour, ms=6)
            ax.annotate(
                stat["verdict"],
                (stat["mean"], i),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=7.5,
                color=colour,
            )
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"{metric.replace('_', ' ')}: method - plain", fontsize=9.5)
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(-0.7, len(methods) - 0.3)
    axes[0][0].set_yticks(range(len(methods)), [drawable(m) for m in methods])
    axes[0][0].invert_yaxis()
    if title:
        fig.suptitle(title, fontsize=10, y=fig.subplotpars.top + 0.5 / fig.get_figheight())  # just above the panels
    return _save(fig, path)


# log.jsonl bookkeeping keys that are not curves.
_NOT_CURVES = ("epoch", "step", "train_seconds")


def plot_run_curves(records: list[dict], path: Path) -> Path:
    """Every scalar of one run's log.jsonl ``records`` against the epoch: one panel for the losses, one
    for the learning rate, one for the validation metrics (clean solid, masked dashed in the same
    colour), then one panel per other statistic (e.g. ``policy/reward``), four panels a row."""
    keys = list(dict.fromkeys(k for r in records for k, v in r.items() if isinstance(v, (int, float))))
    keys = [k for k in keys if k not in _NOT_CURVES]
    panels: dict[str, list[str]] = {}
    for key in keys:
        group = key.split("/")[0]
        if group == "losses":
            panels.setdefault("training losses", []).append(key)
        elif key == "lr":
            panels["learning rate"] = [key]
        elif group in ("val", "val_masked"):
            panels.setdefault("validation (solid: clean, dashed: masked)", []).append(key)
        else:
            panels[key] = [key]
    cols = min(4, max(1, len(panels)))
    rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    epochs = np.array([r.get("epoch", i) + 1 for i, r in enumerate(records)])
    colours: dict[str, str] = {}
    for ax, (title, names) in zip(axes.flat, panels.items()):
        for key in names:
            values = np.array([r.get(key, np.nan) if r.get(key) is not None else np.nan for r in records], dtype=float)
            metric = key.split("/")[-1]
            masked = key.startswith("val_masked/")
            seen = ~np.isnan(values)  # epochs with a value, joined (--val-every skips validations)
            (line,) = ax.plot(
                epochs[seen],
                values[seen],
                marker="o",
                ms=3,
                ls="--" if masked else "-",
                color=colours.get(metric),
                label=None if masked else metric.replace("_", " "),
            )
            colours.setdefault(metric, line.get_color())
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)  # a single epoch still gets a sane axis
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


POLICY_PANELS = {  # title: (key of the line, key of its +-band or None), ...
    "gradient norm (log scale)": (("policy/grad_norm", None), ("policy/classifier_grad_norm", None)),
    "advantage (mean +- spread)": (("policy/advantage_mean", "policy/advantage_std"),),
    "mask mean (+- spread of the per-image means)": (("policy/mask_mean", "policy/mask_sample_std"),),
    "drift from the initial distribution": (("policy/kl_from_initial", None), ("policy/moved_fraction", None)),
}


def plot_policy_panel(records: list[dict], path: Path) -> Path | None:
    """The masking policy at work, per epoch of log.jsonl ``records``: the policy's gradient norm against the
    classifier's, the advantage and the mask mean with their spreads, the KL from the initial Beta and the
    share of cells moved. None when the run logged none of these (not a PGNM run)."""
    panels = {t: lines for t, lines in POLICY_PANELS.items() if any(k in r for r in records for k, _ in lines)}
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.9), squeeze=False)
    epochs = np.array([r.get("epoch", i) + 1 for i, r in enumerate(records)])

    def series(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in records], dtype=float)

    for ax, (title, lines) in zip(axes.flat, panels.items()):
        for key, band in lines:
            values = series(key)
            (line,) = ax.plot(epochs, values, marker="o", ms=3, label=key.split("/")[-1].replace("_", " "))
            if band:
                spread = series(band)
                ax.fill_between(epochs, values - spread, values + spread, color=line.get_color(), alpha=0.2)
        if title.endswith("(log scale)") and np.nanmin([series(k) for k, _ in lines]) > 0:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    """Heatmap of a confusion ``matrix`` (K, K) (rows: true class, columns: predicted), coloured by the
    row-normalised fraction so that rare classes stay visible; counts are written in the cells up to
    25 classes. The figure and the fonts scale with K so that ~40 class names remain readable."""
    counts = np.asarray(matrix, dtype=float)  # (K, K)
    k = counts.shape[0]
    fraction = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # (K, K) recall per row
    side = max(3.2, 0.26 * k + 2.2)
    fontsize = 9 if k <= 12 else max(6.5, 9 - (k - 12) * 0.09)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    classes = [drawable(c) for c in classes]
    ax.set_xticks(range(k), classes, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(k), classes, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{int(counts[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=fontsize - 1,
                        color="white" if fraction[i, j] > 0.55 else "#1f2933",
                    )
    return _save(fig, path)
