"""Batches of one split on the device, in an order that is a pure function of (seed, epoch).

Every rank draws the same permutation and takes its strided share, padded by repetition like
``DistributedSampler`` so all ranks see the same number of batches. Folder-backed splits are decoded
by a torch ``DataLoader`` whose items are whole batches of indices, so ``num_workers`` processes decode
in parallel; in-memory splits are indexed directly.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from rlmask.data.pool import Split
from rlmask.errors import UserError
from rlmask.runtime import derive_seed


class BatchLoader:
    """Iterate over ``split`` in batches of uint8 images and int64 labels on ``device``."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.drop_last, self.device = drop_last, torch.device(device)
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        n = len(split)
        # Samples per rank: pad up to a multiple of world_size, or cut down to one with drop_last.
        self.per_rank = n // world_size if drop_last else -(-n // world_size)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def indices(self, epoch: int) -> torch.Tensor:
        """(per_rank,) int64 sample indices of this rank for ``epoch``, in batch order."""
        n = len(self.split)
        if self.shuffle:
            # Fresh generator per (seed, epoch): the order never depends on what ran before.
            seed = derive_seed(self.seed, epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(n)
        total = self.per_rank * self.world_size
        if total > n:
            order = torch.cat([order, order.repeat(-(-(total - n) // max(n, 1)))[: total - n]])
        return order[:total][self.rank :: self.world_size]

    def epoch(self, epoch: int, start_batch: int = 0):
        """Yield ``(x_u8 (B, C, S, S) uint8, y (B,) int64)`` on the device, skipping ``start_batch`` batches."""
        idx = self.indices(epoch)
        batches = [idx[i * self.batch_size : (i + 1) * self.batch_size] for i in range(start_batch, len(self))]
        cuda = self.device.type == "cuda"
        items = _Batches(self.split, batches)
        if self.split.has_files and self.num_workers > 0:
            source = DataLoader(items, batch_size=None, shuffle=False, num_workers=self.num_workers, pin_memory=cuda)
        else:  # tensor indexing (or serial decoding): no worker processes to start
            source = (items[i] for i in range(len(items)))
        for x, y in source:
            if isinstance(x, str):  # a UserError raised in a worker, passed back as its message
                raise UserError(x)
            yield x.to(self.device, non_blocking=cuda), y.to(self.device, non_blocking=cuda)


class _Batches(Dataset):
    """Item i is batch i: (images, labels), or (error message, None) when a file cannot be decoded."""

    def __init__(self, split: Split, batches: list[torch.Tensor]):
        self.split, self.batches = split, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        index = self.batches[i]
        try:
            return self.split.load(index), self.split.labels[index]
        except UserError as e:
            # Returned, not raised: a DataLoader would wrap it in a multi-line traceback message.
            return str(e), None
