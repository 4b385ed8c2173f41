"""torchrun integration: the environment variables set by torchrun, one ``is_main_process()``."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def setup(device_request: str) -> torch.device:
    """Initialise the process group when launched by torchrun and pick this process's device.

    ``device_request``: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    """
    if device_request == "auto":
        device_request = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_request)
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


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
