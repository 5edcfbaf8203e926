"""Data-parallel fine-tuning under torchrun (issue 17): :class:`Replicas` for N processes (one process: the base class).

``torchrun --nproc_per_node N -m ravn quantize ...`` starts N copies of the command with ``RANK``,
``WORLD_SIZE`` and a rendezvous in the environment; :func:`replicas` gives each its
:class:`DistributedReplicas` (the process group: gloo for CPU tensors, nccl for CUDA ones). Then:

- **the data** (a distributed sampler): every rank draws the same epoch order and augmentation (a
  generator seeded by (seed, epoch)), augments the whole batch and trains on its own contiguous shard of
  it, so the ranks' shards are disjoint and ``--batch-size`` is the global batch for any N: the steps,
  the learning-rate schedule and resume are those of one process;
- **the gradients**: the student is wrapped in ``DistributedDataParallel``, which averages them over the
  ranks during backward (each rank's loss weighted by its share of the batch, so an uneven last batch is
  the global mean too); every rank then takes the same optimizer step and holds the same weights;
- **the files**: rank 0 writes (checkpoints, the run folder's stamp and lock, the episode log, the
  ``.ravn`` file, the report); the other ranks read the same run folder, so a rerun resumes on every rank
  from the same epoch.

Everything else runs on every rank, the same computation (one thread each): the set-up, searches
(their evaluations do not depend on the thread count) and validation. One process and N processes
differ only in floating-point summation order (per-rank means, the all-reduce), not in the data
(tests/training/test_distributed.py measures it).
"""

from __future__ import annotations

import atexit
import functools
import os

import torch
from torch import nn

from ravn.device import local_gpu


class Replicas:
    """One training process (the seam for data-parallel training; :mod:`ravn.training.distributed`)."""

    is_writer: bool = True
    world: int = 1

    def shard(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This process's part of a batch, and its loss weight (its share of the batch x the processes)."""
        return images, labels, 1.0

    def wrap(self, model: nn.Module) -> nn.Module:
        """What the step calls for the forward pass (a data-parallel wrapper that syncs gradients)."""
        return model

    def total(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over the processes."""
        return values

    def barrier(self) -> None:
        """Wait until every process is here."""


class DistributedReplicas(Replicas):
    """This process as rank ``rank`` of ``world`` (the process group is initialised from torchrun's environment)."""

    def __init__(self, rank: int, world: int):
        import torch.distributed as dist

        self.rank, self.world, self.is_writer = rank, world, rank == 0
        if not dist.is_initialized():
            backend = "gloo"
            if torch.cuda.is_available():
                torch.cuda.set_device(local_gpu(default=rank))
                backend = "cpu:gloo,cuda:nccl"
            dist.init_process_group(backend, rank=rank, world_size=world)
            atexit.register(dist.destroy_process_group)

    def shard(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        n = len(labels)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return images[lo:hi], labels[lo:hi], (hi - lo) * self.world / n

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def total(self, values: dict[str, float]) -> dict[str, float]:
        import torch.distributed as dist

        keys = sorted(values)
        summed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(summed)
        return dict(zip(keys, summed.tolist(), strict=True))

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


@functools.cache
def replicas() -> Replicas:
    """This process's replicas: torchrun's ranks when ``WORLD_SIZE`` > 1, else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistributedReplicas(int(os.environ["RANK"]), world) if world > 1 else Replicas()
