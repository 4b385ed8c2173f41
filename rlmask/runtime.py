"""The ground floor for execution: devices, bf16 and compile choices, torchrun processes, seeds, RNG state.

One ``is_main_process()``; torchrun's environment variables; one way to derive seeds
(``derive_seed``) and one per-rank seed formula (``rank_seed``), so no two places disagree.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from rlmask import __version__
from rlmask.errors import UserError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def pick_device(request: str) -> torch.device:
    """ "auto" -> CUDA when available, else the CPU; "cpu", "cuda" or "cuda:N" checked, with a one-line error."""
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(request)
    except RuntimeError:
        raise UserError(f"--device {request}: not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {request}: CUDA is not available on this machine")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively, so bf16 autocast speeds training up.

    CUDA GPUs from Ampere on; CPUs whose oneDNN has bf16 kernels (AVX512-BF16 or AMX). Elsewhere
    bf16 is emulated and slower than float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_amp(amp: bool | None, device: torch.device) -> bool:
    """An ``--amp/--no-amp`` choice, None meaning: bf16 autocast where ``device`` computes bf16 natively."""
    return native_bf16(device) if amp is None else bool(amp)


# Channels-last per device type and precision (bf16 autocast or not), from ``rlmask bench --vary channels_last``:
# on this project's 2-core CPU it was 2-17% faster than contiguous for resnet10t/18/50 at 28 and 64 px in both
# float32 and bf16 (benchmarks/results/channels-last-2026-12-06.jsonl); on CUDA it is the layout cuDNN's
# convolutions prefer. A machine where contiguous wins: --no-channels-last, after measuring with bench.
CHANNELS_LAST = {("cpu", False): True, ("cpu", True): True, ("cuda", False): True, ("cuda", True): True}


def resolve_channels_last(flag: bool | None, device: torch.device, amp: bool) -> tuple[bool, str]:
    """A ``--channels-last/--no-channels-last`` choice (None: the default for the device and precision) and
    the reason, for config.json."""
    precision = "bf16" if amp else "float32"
    if flag is not None:
        return bool(flag), "set by --channels-last/--no-channels-last"
    chosen = CHANNELS_LAST.get((device.type, bool(amp)), True)
    return chosen, f"default for {device.type} in {precision}: {'channels-last' if chosen else 'contiguous'}"


def resolve_compile(compile: bool | None, device: torch.device) -> bool:
    """A ``--compile/--no-compile`` choice, None meaning: on CUDA only (on the CPU it did not pay, see the README)."""
    return device.type == "cuda" if compile is None else bool(compile)


def setup(device_request: str) -> torch.device:
    """Initialise the process group when launched by torchrun and pick this process's device.

    ``device_request``: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    """
    device = pick_device(device_request)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Average a tensor across processes in place (no-op in a single process)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world_size()
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally sized tensors from every process along dim 0."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def broadcast_buffers(module: nn.Module) -> None:
    """Give every process rank 0's buffers (BN running statistics): the state that rank 0 saves."""
    if world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics span every process (CPU/gloo; torch's SyncBatchNorm is GPU-only).

    Sum, sum of squares and count are summed with a differentiable all-reduce, so the forward and the
    backward equal those of one process holding the whole global batch. Parameters and buffers keep
    BatchNorm's names, so state dicts stay timm-compatible.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [d for d in range(x.dim()) if d != 1]  # all but channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))  # (2C+1,) summed over ranks
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class GlobalBatchNorm1d(GlobalBatchNorm, nn.BatchNorm1d):
    pass


class GlobalBatchNorm2d(GlobalBatchNorm, nn.BatchNorm2d):
    pass


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Batch norm over the global batch: torch's SyncBatchNorm on CUDA, ``GlobalBatchNorm`` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    swap = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d}
    for module in model.modules():
        if type(module) in swap:
            module.__class__ = swap[type(module)]  # same parameters and buffers, global statistics
    return model


def derive_seed(*parts: int, wide: bool = False) -> int:
    """One seed from several integers (independent streams for different tuples), via numpy's SeedSequence.

    ``wide=False``: a 32-bit seed; ``wide=True``: a 63-bit one.
    """
    seq = np.random.SeedSequence([int(p) % 2**64 for p in parts])
    return int(seq.generate_state(1, np.uint64)[0] % 2**63) if wide else int(seq.generate_state(1)[0])


def rank_seed(seed: int, process: int | None = None) -> int:
    """The seed of process ``process`` (default: this one) for streams that must differ across ranks."""
    return seed * 7919 + 104729 * ((rank() if process is None else process) + 1)


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


def provenance(device: torch.device) -> dict[str, Any]:
    """What produced a run, for its config.json: versions, the git commit of a checkout, the device, the time."""
    commit = None
    source = Path(__file__).resolve().parent.parent
    if (source / ".git").exists():
        try:
            done = subprocess.run(
                ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            )
            commit = done.stdout.strip() or None
            dirty = subprocess.run(
                ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            commit = f"{commit}+modified" if commit and dirty else commit
        except (OSError, subprocess.SubprocessError):
            commit = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return {
        "rlmask": __version__,
        "git_commit": commit,
        "torch": str(torch.__version__),
        "device": str(device),
        "device_name": name,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
