"""Data-parallel fine-tuning (issue 17): two gloo processes train the toy model as one process would.

The processes are spawned with torchrun's environment (``RANK``, ``WORLD_SIZE``, a rendezvous), run
:func:`ravn.training.finetune.fine_tune` and store their final weights; the test compares the ranks
with each other (identical) and with one process on the same global batch (equal up to float rounding).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from ravn.training.distributed import Replicas
from ravn.training.finetune import FineTuneConfig, fine_tune
from tests.training.test_finetune import NORM, _setup, _toy_dataset

CONFIG = FineTuneConfig(epochs=2, lr=5e-3, batch_size=15, max_steps=4)  # 15: an uneven split on 2 ranks


def _train(run_dir: Path | None) -> dict[str, torch.Tensor]:
    model, weights = _setup()
    result = fine_tune(model, weights, _toy_dataset(), NORM, CONFIG, run_dir=run_dir, seed=3, progress=False)
    state = {f"latent.{k}": v for k, v in result.latent.state_dict().items()}
    return {**state, **{f"q.{n}": q.dequantize() for n, q in result.weights.items()},
            "history": torch.tensor([[h["val_top1"], h["val_loss"]] for h in result.history], dtype=torch.float64)}


def _rank(rank: int, world: int, port: int, folder: str) -> None:
    from safetensors.torch import save_file

    from ravn.training import distributed

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    distributed.replicas.cache_clear()
    out = _train(Path(folder) / "run")
    save_file({k: v.contiguous() for k, v in out.items()}, str(Path(folder) / f"rank{rank}.safetensors"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_rank, args=(2, _free_port(), str(folder)), nprocs=2)
    return folder, [load_file(str(folder / f"rank{r}.safetensors")) for r in range(2)]


def test_both_ranks_hold_identical_weights(two_ranks):
    _, (zero, one) = two_ranks
    assert zero.keys() == one.keys()
    for key in zero:
        assert torch.equal(zero[key], one[key]), key


def test_only_rank_zero_writes_the_checkpoints_and_they_resume_one_process(two_ranks, one_thread):
    folder, (zero, _) = two_ranks
    assert sorted(p.name for p in (folder / "run").iterdir()) == ["best.safetensors", "last.safetensors"]
    resumed = _train(folder / "run")  # one process, after the last epoch: nothing left to train
    for key in zero:
        assert torch.equal(resumed[key], zero[key]), key


def test_two_processes_equal_one_on_the_same_global_batch(two_ranks, one_thread):
    """The same data, shards and steps: only the order of float sums differs (per-rank means, all-reduce)."""
    _, (zero, _) = two_ranks
    one = _train(None)
    for key in zero:
        if key.startswith("latent."):
            assert torch.allclose(zero[key], one[key], rtol=1e-4, atol=1e-6), key
    assert torch.allclose(zero["history"], one["history"], atol=1e-4)


def test_shards_are_disjoint_and_weighted_by_their_share():
    from ravn.training.distributed import DistributedReplicas

    images, labels = torch.arange(15).view(15, 1), torch.arange(15)
    parts = []
    for rank in range(2):
        replica = DistributedReplicas.__new__(DistributedReplicas)
        replica.rank, replica.world = rank, 2
        parts.append(replica.shard(images, labels))
    assert torch.equal(torch.cat([p[1] for p in parts]), labels)
    assert [len(p[1]) for p in parts] == [7, 8] and [p[2] for p in parts] == [14 / 15, 16 / 15]
    assert Replicas().shard(images, labels)[2] == 1.0
