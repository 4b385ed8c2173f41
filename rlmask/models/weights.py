"""Initial weights from any checkpoint kind users have: rlmask checkpoints, heated.pt, timm state dicts.

Rules (documented in the README):
- keys may carry ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefixes; they are stripped;
- a classifier head (``fc.*``) whose shape differs from the model's (other classes) is left freshly
  initialised: the usual transfer set-up;
- a first convolution trained on RGB loaded into a grey model is summed over its input channels,
  a grey one loaded into an RGB model is repeated and divided by 3, so responses to grey images
  are unchanged;
- any other missing, unexpected or mismatched key is an error naming the first few.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rlmask.errors import UserError, reason
from rlmask.io import load_checkpoint, read_json
from rlmask.models import create_model

# Reference normalisation (mean, std) on every channel, used when a checkpoint does not say.
DEFAULT_NORM = (0.3162, 0.3213)
FIRST_CONVS = ("conv1.weight", "conv1.0.weight", "blocks.0.0.weight")  # plain, deep (resnet10t) stems; context_encoder
HEAD_PREFIXES = ("fc.", "head.fc.", "classifier.")


def extract_state_dict(obj: dict) -> dict[str, torch.Tensor]:
    """The classifier's state dict inside any supported checkpoint kind, prefixes stripped."""
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        # torch.compile wraps a module as `_orig_mod`, DDP as `module`; either may nest the other.
        while name.startswith(("_orig_mod.", "module.")):
            name = name.split(".", 1)[1]
        state[name] = value
    return state


def _adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    # (O, I, k, k) -> (O, in_chans, k, k)
    if weight.shape[1] == 3 and in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if weight.shape[1] == 1 and in_chans == 3:
        return weight.repeat(1, 3, 1, 1) / 3
    return weight


def load_init_weights(model: nn.Module, path: str | Path, option: str = "--init", trust: bool = False) -> list[str]:
    """Load classifier weights from ``path`` into ``model``; returns the keys left at their fresh values."""
    state = extract_state_dict(load_checkpoint(path, option, trust))
    if not state:
        raise UserError(f"{option} {path}: holds no tensors of a model state dict")
    own = model.state_dict()
    fresh, problems = [], []
    for name, target in own.items():
        if name not in state:
            if name.startswith(HEAD_PREFIXES):
                fresh.append(name)
            else:
                problems.append(f"missing {name}")
            continue
        value = state[name]
        if name in FIRST_CONVS and value.dim() == target.dim() == 4 and value.shape[2:] == target.shape[2:]:
            value = _adapt_first_conv(value, target.shape[1])
        if value.shape != target.shape:
            if name.startswith(HEAD_PREFIXES):
                fresh.append(name)
                continue
            problems.append(f"{name} has shape {tuple(value.shape)}, model needs {tuple(target.shape)}")
            continue
        own[name] = value.to(target.dtype)
    unexpected = [k for k in state if k not in own]
    problems += [f"unexpected {k}" for k in unexpected]
    if problems:
        deep_ckpt, deep_model = "conv1.0.weight" in state, "conv1.0.weight" in own
        if deep_ckpt != deep_model:  # another architecture altogether, not a stem variant of this one
            hint = (
                f" (the checkpoint has {'a deep three-conv' if deep_ckpt else 'a single-conv'} stem, the model "
                f"{'a deep three-conv' if deep_model else 'a single-conv'} one: another architecture; check --model)"
            )
        elif any(p.split()[p.startswith(("missing", "unexpected"))].startswith("conv1") for p in problems):
            hint = " (7x7 vs 3x3 stem? set --small-stem or --no-small-stem to match)"
        else:
            hint = ""
        raise UserError(
            f"{option} {path}: does not fit the model: {'; '.join(problems[:3])}"
            f"{f' and {len(problems) - 3} more' if len(problems) > 3 else ''}{hint}"
        )
    model.load_state_dict(own, strict=True)
    return fresh


def init_architecture(path: str | Path, trust: bool = False) -> dict:
    """{"model", "small_stem"} a checkpoint was trained with: an rlmask checkpoint's own record, else the
    config.json of the run folder beside it (heated.pt); None where neither says."""
    path = Path(path)
    obj = load_checkpoint(path, "--init", trust)
    if obj.get("kind") == "rlmask" and isinstance(obj.get("model_info"), dict):
        return {"model": obj["model_info"].get("name"), "small_stem": obj["model_info"].get("small_stem")}
    sidecar = path.parent / "config.json"
    meta = read_json(sidecar, "--init: the config.json beside") if sidecar.is_file() else {}
    return {"model": meta.get("model"), "small_stem": meta.get("small_stem")}


def head_classes(model: nn.Module, path, option: str = "checkpoint") -> int:
    """The class count of ``model``'s classifier head; a one-line error for a backbone without one."""
    head = getattr(model, "num_classes", None) or getattr(model.get_classifier(), "out_features", 0)
    if not head:
        raise UserError(
            f"{option} {path}: a backbone without a classifier head (e.g. the encoder a self-supervised run "
            "exports); fine-tune it first (rlmask finetune --init) or probe it (rlmask transfer)"
        )
    return head


def load_classifier(
    path: str | Path,
    model_name: str | None = None,
    option: str = "checkpoint",
    trust: bool = False,
    small_stem: bool | None = None,
) -> tuple[nn.Module, dict]:
    """A ready classifier from any checkpoint kind, and what is known of the data it was trained on.

    rlmask checkpoints carry their model and data description. A plain state dict (``heated.pt``, a
    timm file) takes its architecture from ``model_name`` or the ``config.json`` of the run folder
    beside it, its class count and input channels from the tensors' shapes; its stem from ``small_stem``, else
    that config.json, else the first convolution's kernel (3x3 where a standard stem has 7x7; a deep-stem
    model such as resnet10t has 3x3 either way, and is taken as standard).
    Returns ``(model in eval mode on the CPU, {"classes", "channels", "image_size", "mean", "std", "small_stem", "model",
    "config"})`` (config: the training run's options, where known)
    where unknown entries are None.
    """
    path = Path(path)
    obj = load_checkpoint(path, option, trust)
    if obj.get("kind") == "rlmask":
        try:
            info, data = obj["model_info"], dict(obj["data"])
            state, num_classes = obj["model"], info["num_classes"]
            if info.get("task") == "reconstruct":  # a U-Net: its encoder is the backbone, without a head
                state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
                num_classes = 0
            model = create_model(info["name"], num_classes, in_chans=data["channels"], small_stem=info["small_stem"])
            model.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            why = reason(err)
            raise UserError(f"{option} {path}: an incomplete or damaged rlmask checkpoint ({why})") from None
        return model.eval(), data | {
            "small_stem": info["small_stem"],
            "model": info["name"],
            "config": obj.get("config"),
        }
    state = extract_state_dict(obj)
    sidecar = path.parent / "config.json"
    meta = read_json(sidecar, f"{option}: the config.json beside") if sidecar.is_file() else {}
    name = model_name or meta.get("model")
    if not name:
        raise UserError(f"{option} {path}: a plain state dict; name its architecture with --model")
    stem = next((state[k] for k in FIRST_CONVS if k in state), None)
    if stem is None:
        raise UserError(
            f"{option} {path}: no first-convolution weights ({', '.join(FIRST_CONVS)}): "
            "not a state dict of a built-in backbone"
        )
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 0
    if small_stem is None:
        small_stem = meta.get("small_stem", stem.shape[-1] == 3 and "conv1.weight" in state)
    model = create_model(name, num_classes, in_chans=stem.shape[1], small_stem=small_stem)
    load_init_weights(model, path, option, trust)
    # A run that trained on another input scaling (the reconstruct task's reference [-1, 1]) records it.
    data = {
        "classes": None,
        "channels": stem.shape[1],
        "image_size": meta.get("image_size"),
        "mean": meta.get("mean", DEFAULT_NORM[0]),
        "std": meta.get("std", DEFAULT_NORM[1]),
        "small_stem": small_stem,
        "model": name,
        "config": meta or None,
    }
    return model.eval(), data
