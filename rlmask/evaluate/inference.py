"""Run a classifier over a split and score it."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from rlmask import runtime
from rlmask.data import Augment, BatchLoader, Split, build_pool
from rlmask.data.folder import decode_image
from rlmask.data.options import DATA_OPTION_NAMES, DataOptions
from rlmask.errors import UserError
from rlmask.evaluate.metrics import classification_metrics
from rlmask.io import atomic_write_bytes
from rlmask.models.weights import head_classes, load_classifier


@torch.no_grad()
def predict_split(
    model: nn.Module,
    split: Split,
    transform: Augment,
    *,
    batch_size: int,
    device: torch.device,
    amp: bool = False,
    mask_fn: Callable[[torch.Tensor], torch.Tensor | list[torch.Tensor]] | None = None,
    progress: str | None = None,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, K) and labels (N,) of a whole split, in split order, on the CPU.

    Under torchrun every process scores its share and the shares are gathered, so all processes
    return the same full result. ``mask_fn`` maps the normalised batch to the input the model sees, or to
    a list of inputs whose softmax outputs are averaged (masked validation, test-time augmentation).
    """
    rank, world = runtime.rank(), runtime.world_size()
    was_training = model.training
    model.eval()
    loader = BatchLoader(
        split,
        batch_size,
        shuffle=False,
        seed=0,
        drop_last=False,
        device=device,
        rank=rank,
        world_size=world,
        num_workers=num_workers,
    )
    probs = []
    batches = loader.epoch(0)
    if progress:
        batches = tqdm(batches, total=len(loader), desc=progress, leave=False, disable=None)
    for x_u8, _ in batches:
        x = transform(x_u8, None)
        views = mask_fn(x) if mask_fn is not None else x
        views = views if isinstance(views, (list, tuple)) else [views]
        batch_probs = 0
        for view in views:  # several views: the mean of their softmax outputs (test-time augmentation)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(view)
            batch_probs = batch_probs + logits.float().softmax(dim=1)
        probs.append(batch_probs / len(views) if len(views) > 1 else batch_probs)
    model.train(was_training)
    probs = torch.cat(probs)  # (per_rank, K), padded by repetition on the last ranks
    if world > 1:
        index = runtime.all_gather_cat(loader.indices(0).to(probs.device))
        gathered = runtime.all_gather_cat(probs)
        probs = torch.empty((len(split), gathered.shape[1]), device=gathered.device)
        probs[index] = gathered
    return probs.cpu(), split.labels.clone()


def evaluate_split(model: nn.Module, split: Split, classes: list[str], transform: Augment, **kwargs) -> dict:
    """Metrics dict (see ``classification_metrics``) of ``model`` on ``split``."""
    probs, labels = predict_split(model, split, transform, **kwargs)
    return classification_metrics(probs.numpy(), labels.numpy(), classes)


def _checkpoint_fits(model: nn.Module, meta: dict, classes: list[str], path, data_specs) -> None:
    """A one-line error when a checkpoint's classes do not match the data it is evaluated on."""
    head = head_classes(model, path)
    if meta.get("classes") is not None and list(meta["classes"]) != list(classes):
        raise UserError(
            f"checkpoint {path} does not fit --data {' '.join(data_specs)}: it was trained on "
            f"{len(meta['classes'])} classes ({', '.join(meta['classes'][:3])}, ...), the data has "
            f"{len(classes)} ({', '.join(classes[:3])}, ...)"
        )
    if head != len(classes):
        raise UserError(
            f"checkpoint {path} does not fit --data {' '.join(data_specs)}: "
            f"its head has {head} classes, the data has {len(classes)}"
        )


def evaluate_checkpoint(
    path,
    data_specs: list[str],
    *,
    split: str = "test",
    model_name: str | None = None,
    small_stem: bool | None = None,
    batch_size: int = 256,
    device: str = "auto",
    amp: bool | None = None,
    cache_dir=None,
    trust: bool = False,
) -> dict:
    """Metrics of a checkpoint on a split of the pool ``data_specs`` (resized as in training)."""

    model, meta = load_classifier(path, model_name, trust=trust, small_stem=small_stem)
    # Data without fixed splits is split as in training (the run's seed and split options), so the test
    # split scored here is the one the model never saw.
    run = meta.get("config") or {}
    pool = build_pool(
        data_specs,
        meta.get("image_size"),
        meta.get("channels"),
        cache_dir=cache_dir,
        options=DataOptions(**{k: v for k, v in run.items() if k in DATA_OPTION_NAMES}),
        seed=run.get("seed", 0),
    )
    if split not in pool.splits:
        raise UserError(f"--split {split}: the data has no {split} split (has {', '.join(pool.splits)})")
    _checkpoint_fits(model, meta, pool.classes, path, data_specs)
    dev = runtime.pick_device(device)
    model.to(dev)
    transform = Augment(pool.image_size, train=False, mean=meta["mean"], std=meta["std"])
    return evaluate_split(
        model,
        pool.splits[split],
        pool.classes,
        transform,
        batch_size=batch_size,
        device=dev,
        amp=runtime.resolve_amp(amp, dev),
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _image_files(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"{item}: no such file or folder")
    if not files:
        raise UserError(f"{' '.join(inputs)}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def predict_files(
    path,
    inputs: list[str],
    out,
    *,
    model_name: str | None = None,
    small_stem: bool | None = None,
    batch_size: int = 256,
    device: str = "auto",
    image_size: int | None = None,
    amp: bool | None = None,
    trust: bool = False,
    overwrite: bool = False,
) -> int:
    """Write ``out`` (CSV: path, prediction, one probability column per class); returns the row count.

    ``out`` is checked before any work: an existing file is kept unless ``overwrite``.
    """
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give the CSV file to write")
    if out.exists() and not overwrite:
        raise UserError(f"--out {out}: exists; add --overwrite to replace it")
    model, meta = load_classifier(path, model_name, trust=trust, small_stem=small_stem)
    size = image_size or meta.get("image_size")
    if size is None:
        raise UserError(f"checkpoint {path}: image size unknown; it has no config.json beside it")
    num_classes = head_classes(model, path)
    classes = meta.get("classes") or [str(i) for i in range(num_classes)]
    dev = runtime.pick_device(device)
    amp = runtime.resolve_amp(amp, dev)
    model.to(dev)
    transform = Augment(size, train=False, mean=meta["mean"], std=meta["std"])
    files = _image_files(inputs)
    rows = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        x = torch.stack([decode_image(str(f), meta["channels"], size, None) for f in chunk]).to(dev)
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            probs = model(transform(x, None)).float().softmax(dim=1).cpu()
        for f, p in zip(chunk, probs.tolist()):
            rows.append([str(f), classes[max(range(len(p)), key=p.__getitem__)], *(f"{v:.6f}" for v in p)])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "prediction", *classes])
    writer.writerows(rows)
    try:  # file names that are not valid UTF-8 are written back as the bytes they were
        atomic_write_bytes(out, buffer.getvalue().encode("utf-8", "surrogateescape"))
    except OSError as err:
        raise UserError(f"--out {out}: cannot write it ({err.strerror or err})") from None
    return len(rows)
