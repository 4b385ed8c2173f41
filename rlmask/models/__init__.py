"""Model registry: built-in timm-compatible ResNets, Intelligent Masking's ``context_encoder``, an optional
``timm:<name>`` passthrough, the agents' U-Nets (small and VGG-11) and the reconstruct task's ``Reconstructor``.

``create_model("resnet18", num_classes=10)`` builds a registered model; ``register_model`` adds a
builder ``fn(num_classes, in_chans=3, small_stem=False) -> nn.Module`` under its function name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from rlmask.errors import UserError
from rlmask.models.resnet import ResNet, resnet10t, resnet18, resnet26, resnet34, resnet50
from rlmask.models.unet import ContextEncoder, Reconstructor, UNet, VGG11UNet, context_encoder

__all__ = [
    "ContextEncoder",
    "Reconstructor",
    "ResNet",
    "UNet",
    "VGG11UNet",
    "create_model",
    "list_models",
    "register_model",
    "seeded_init",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn(num_classes, in_chans=3, small_stem=False)`` under ``fn.__name__``."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    return fn


for _fn in (resnet10t, resnet18, resnet26, resnet34, resnet50, context_encoder):
    register_model(_fn)


SMALL_STEM_MAX_SIZE = 32


def default_small_stem(name: str, image_size: int) -> bool:
    """Whether ``name`` gets the stride-1 stem by default: built-in models at <= 32 px.

    At 28-32 px the usual stride-4 stem leaves a 1x1 map in the last stage; from 64 px on, the
    stride-1 stem would cost as much as a 256-px image with the usual stem, so it stays opt-in there.
    """
    return not name.startswith("timm:") and image_size <= SMALL_STEM_MAX_SIZE


def list_models() -> list[str]:
    """Sorted names of the registered models (``timm:<name>`` is accepted too, when timm imports)."""
    return sorted(_REGISTRY)


@contextlib.contextmanager
def seeded_init(generator: torch.Generator | None) -> Iterator[None]:
    """Within this block, PyTorch's default CPU RNG is seeded from ``generator`` and restored afterwards,
    so module constructors (which draw their initial weights from the global RNG) become reproducible
    without touching global state. With ``generator=None`` nothing changes.
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_model_name(name: str) -> None:
    """A one-line UserError for a model name that is neither registered nor ``timm:<name>``."""
    if not name.startswith("timm:") and name not in _REGISTRY:
        choices = ", ".join(list_models())
        raise UserError(f"--model {name}: unknown model; choose from {choices}, or timm:<name>")


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    small_stem: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs (0: pooled features) for ``in_chans`` channels.

    ``small_stem`` suits 28-64 px images (no stride in the stem, see ``ResNet``). ``timm:<name>``
    builds ``timm.create_model(<name>, pretrained=False, ...)`` when timm imports. The initial weights
    are drawn from ``generator`` when one is given (see ``seeded_init``).
    """
    if name.startswith("timm:"):
        return _create_timm(name, num_classes, in_chans, small_stem, generator)
    check_model_name(name)
    with seeded_init(generator):
        return _REGISTRY[name](num_classes=num_classes, in_chans=in_chans, small_stem=small_stem)


def _create_timm(
    name: str, num_classes: int, in_chans: int, small_stem: bool, generator: torch.Generator | None
) -> nn.Module:
    try:
        import timm
    except Exception:  # a broken install (e.g. torchvision mismatch) raises more than ImportError
        raise UserError(f"--model {name}: timm is not installed or does not import (pip install timm)") from None
    if small_stem:
        builtin = ", ".join(list_models())
        raise UserError(f"--model {name}: small_stem works only with the built-in models ({builtin}); turn it off")
    try:
        with seeded_init(generator):
            return timm.create_model(name[len("timm:") :], pretrained=False, num_classes=num_classes, in_chans=in_chans)
    except RuntimeError as e:  # timm's "Unknown model (...)"
        raise UserError(f"--model {name}: {e}") from None
