"""PyTorch DDP inside one fold: which process this is, and the few collective steps training needs.

Under `torchrun` every process (rank) runs the same `train_fold`: the model is wrapped in
DistributedDataParallel (gradients averaged across ranks), each epoch's crops are split
between ranks by a DistributedSampler, and rank 0 alone writes checkpoints and talks to
MLflow. Outside torchrun nothing here changes anything (`Ranks()` is rank 0 of 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Sampler


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes checkpoints, logs and MLflow runs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self, device: torch.device) -> torch.device:
        """Each rank's own GPU (torchrun's LOCAL_RANK); other devices are shared as they are."""
        return torch.device("cuda", self.local_rank) if self.distributed and device.type == "cuda" else device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module the optimiser steps through: DDP across ranks, else the model itself."""
        if not self.distributed:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def sampler(self, dataset: Dataset) -> Sampler | None:
        """This rank's share of an epoch (in the epoch's order; padded so every rank takes as many steps)."""
        return DistributedSampler(dataset, self.world, self.rank, shuffle=False) if self.distributed else None

    def sum(self, *values: float) -> list[float]:
        """Sums over ranks (e.g. a loss total and a sample count)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        torch.distributed.all_reduce(t)
        return t.tolist()

    def from_main(self, value: float) -> float:
        """Rank 0's value on every rank: decisions (best epoch, early stopping) must agree."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        torch.distributed.broadcast(t, src=0)
        return float(t.item())

    def _collective_device(self) -> torch.device:
        """NCCL reduces only CUDA tensors; gloo, CPU ones."""
        return torch.device("cuda", self.local_rank) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def current() -> Ranks:
    """This process's rank, when a process group is initialised (torchrun), else rank 0 of 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Ranks(torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Ranks()


def init_process_group(device: str) -> Ranks:
    """Join torchrun's group: NCCL between GPUs, gloo on CPU."""
    backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend)
    ranks = current()
    if backend == "nccl":
        torch.cuda.set_device(ranks.local_rank)
    return ranks
