"""GradDropLayer(process_group=...) under DistributedDataParallel: 2 processes, Gloo over
loopback (127.0.0.1), a short group timeout so that a failure ends instead of hanging.

20 SGD steps of a float64 multitask model, each rank on its half of every global batch: the
parameters must stay identical across ranks and equal those of one process trained on the
whole batches with rank 0's generator state (GradDrop's purity, draw and masks are global).
"""
import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import graddrop

WORLD = 2
STEPS = 20
GLOBAL_BATCH = 16
FEATURES = 32
TIMEOUT = datetime.timedelta(seconds=20)


class MultitaskModel(nn.Module):
    def __init__(self, process_group=None):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, FEATURES), nn.Tanh())
        self.graddrop = graddrop.GradDropLayer(2, process_group=process_group)
        self.heads = nn.ModuleList([nn.Linear(FEATURES, 2), nn.Linear(FEATURES, 1)])

    def forward(self, x):
        shared = self.graddrop(self.trunk(x))
        return [head(s) for head, s in zip(self.heads, shared)]


def data(seed):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(STEPS, GLOBAL_BATCH, 6, generator=generator, dtype=torch.float64)
    targets = [torch.randn(STEPS, GLOBAL_BATCH, 2, generator=generator, dtype=torch.float64),
               torch.randn(STEPS, GLOBAL_BATCH, 1, generator=generator, dtype=torch.float64)]
    return inputs, targets


def loss_of(outputs, targets):
    return sum(((out - target) ** 2).mean() for out, target in zip(outputs, targets))


def train(model, parameters_owner, inputs, targets, rows):
    optimizer = torch.optim.SGD(parameters_owner.parameters(), lr=0.1)
    for step in range(STEPS):
        optimizer.zero_grad()
        loss_of(model(inputs[step, rows]), [t[step, rows] for t in targets]).backward()
        optimizer.step()


def make_model(seed, process_group=None):
    torch.manual_seed(seed)  # the same initial parameters everywhere
    return MultitaskModel(process_group).double()


def worker(rank, port, seed, find_unused, mode, results):
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, WORLD, rank == 0, timeout=TIMEOUT)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD, timeout=TIMEOUT)
    try:
        if mode == "mismatch":
            layer = graddrop.GradDropLayer(2, process_group=dist.group.WORLD)
            activation = torch.randn(4, 8 if rank == 0 else 6, dtype=torch.float64,
                                     requires_grad=True)
            a, b = layer(activation)
            try:
                (a.sum() + b.sum()).backward()
                message = "no error"
            except RuntimeError as error:
                message = str(error)
            torch.save(message, os.path.join(results, f"rank{rank}.pt"))
            return
        model = make_model(seed, dist.group.WORLD)
        ddp = DistributedDataParallel(model, find_unused_parameters=find_unused)
        # Each rank's own generator state: only rank 0's draw may count.
        torch.manual_seed(seed + 1 + 1000 * rank)
        inputs, targets = data(seed + 2)
        half = GLOBAL_BATCH // WORLD
        train(ddp, ddp, inputs, targets, slice(rank * half, (rank + 1) * half))
        torch.save([p.detach() for p in model.parameters()],
                   os.path.join(results, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_ranks(tmp_path, seed, find_unused=False, mode="train"):
    mp.spawn(worker, args=(free_port(), seed, find_unused, mode, str(tmp_path)), nprocs=WORLD,
             join=True)
    return [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.parametrize("find_unused", [False, True])
def test_ddp_training_equals_one_process_on_the_global_batch(tmp_path, seed, find_unused):
    ranks = run_ranks(tmp_path, seed, find_unused)

    single = make_model(seed)
    torch.manual_seed(seed + 1)  # rank 0's generator state
    inputs, targets = data(seed + 2)
    train(single, single, inputs, targets, slice(0, GLOBAL_BATCH))
    initial = make_model(seed)

    for rank_parameters in ranks[1:]:
        for mine, theirs in zip(ranks[0], rank_parameters):
            assert torch.equal(mine, theirs), "the ranks' parameters differ"
    moved = False
    for trained, expected, start in zip(ranks[0], single.parameters(), initial.parameters()):
        torch.testing.assert_close(trained, expected.detach(), rtol=1e-9, atol=1e-9)
        moved = moved or not torch.equal(trained, start.detach())
    assert moved, "training changed no parameter"


def test_mismatched_shapes_fail_on_every_rank_naming_group_and_shapes(tmp_path, seed):
    messages = run_ranks(tmp_path, seed, mode="mismatch")
    for rank, message in enumerate(messages):
        assert "process group '" in message, message
        assert "features [8]" in message and "features [6]" in message, message
        assert f"shape [4, {8 if rank == 0 else 6}]" in message, message
