"""Multi-Fashion multitask training with the graddrop Python package: a LeNet trunk shared by two
10-way heads, trained with equal loss weights and with a graddrop.GradDropLayer between trunk and
heads, from the same initial weights and in the same batch order. Prints per-epoch progress and a
table of per-task test accuracy, training time per epoch and GradDrop's time overhead, as the C++
demo (examples/multitask_fashion.cpp, docs/demo.md) does.

    python examples/python/multi_fashion.py                       # 60000/10000 pairs, 6 epochs
    python examples/python/multi_fashion.py --train-size=600 --test-size=500 --epochs=2

The data are Debian's dataset-fashion-mnist files (gzipped IDX), composed into Multi-Fashion as
the C++ demo does: the first item at rows and columns 0-27 of a 36x36 canvas, the second shifted
by 6 pixels, overlapping pixels take the maximum, resized to 28x28 (bilinear). Pairs come from a
generator seeded with --pair-seed (the test pairs with --pair-seed + 1), with the same generator
calls as the C++ demo.
"""
from __future__ import annotations

import argparse
import gzip
import math
import os
import statistics as stats
import struct
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

import graddrop

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
CANVAS_SIDE = 36
SECOND_ITEM_OFFSET = 6
SHARED_FEATURES = 50
CLASSES = 10
EVALUATION_BATCH = 1000
METHODS = ("equal_weight", "graddrop")


class DatasetError(Exception):
    """A data file is missing or is not what Fashion-MNIST ships."""


def read_idx_ubyte_gz(path: str, dims: int) -> torch.Tensor:
    """A gzipped IDX file of unsigned bytes with `dims` dimensions, as a uint8 tensor."""
    hint = "install the Debian package dataset-fashion-mnist (or pass --data-dir)"
    if not os.path.exists(path):
        raise DatasetError(f"{path}: file not found; {hint}")
    try:
        with gzip.open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise DatasetError(f"{path}: cannot read it ({error}); {hint}") from error
    magic = 0x0800 | dims
    if len(data) < 4 + 4 * dims or struct.unpack(">I", data[:4])[0] != magic:
        raise DatasetError(f"{path}: bad IDX magic (expected {magic:#010x}); {hint}")
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    body = data[4 + 4 * dims:]
    if len(body) != math.prod(shape):
        raise DatasetError(f"{path}: {len(body)} bytes of data for shape {list(shape)}; {hint}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def load_fashion_split(directory: str, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """The "train" (60000 items) or "t10k" (10000 items) split: uint8 images [N, 28, 28] and
    int64 labels [N]."""
    images = read_idx_ubyte_gz(os.path.join(directory, f"{split}-images-idx3-ubyte.gz"), 3)
    labels = read_idx_ubyte_gz(os.path.join(directory, f"{split}-labels-idx1-ubyte.gz"), 1)
    expected = 60000 if split == "train" else 10000
    if images.shape != (expected, 28, 28) or labels.shape != (expected,):
        raise DatasetError(f"{directory}: the {split} split has images {list(images.shape)} and "
                           f"labels {list(labels.shape)}, expected [{expected}, 28, 28] and "
                           f"[{expected}]")
    if int(labels.max()) >= CLASSES:
        raise DatasetError(f"{directory}: a {split} label is {int(labels.max())}, outside 0..9")
    return images, labels.long()


def compose_canvas(first: torch.Tensor, second: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 items [B, 28, 28] twice -> float canvases [B, 1, side, side] in [0, 1]."""
    item = first.shape[1]
    canvas = torch.zeros(first.shape[0], 1, CANVAS_SIDE, CANVAS_SIDE)
    canvas[:, 0, :item, :item] = first.float()
    window = canvas[:, 0, SECOND_ITEM_OFFSET:SECOND_ITEM_OFFSET + item,
                    SECOND_ITEM_OFFSET:SECOND_ITEM_OFFSET + item]
    window.copy_(torch.maximum(window, second.float()))
    canvas /= 255.0
    if side == CANVAS_SIDE:
        return canvas
    return F.interpolate(canvas, size=(side, side), mode="bilinear", align_corners=False)


@dataclass
class MultiFashionSet:
    images: torch.Tensor         # float [K, 1, side, side]
    labels_first: torch.Tensor   # int64 [K]
    labels_second: torch.Tensor  # int64 [K]

    def to(self, device: torch.device) -> "MultiFashionSet":
        return MultiFashionSet(self.images.to(device), self.labels_first.to(device),
                               self.labels_second.to(device))


def make_multi_fashion(images: torch.Tensor, labels: torch.Tensor, pairs: int, seed: int,
                       side: int) -> MultiFashionSet:
    """`pairs` canvases: the first items walk through a random permutation of the split, each
    second item is drawn uniformly from the other items."""
    items = images.shape[0]
    generator = torch.Generator().manual_seed(seed)
    first = torch.cat([torch.randperm(items, generator=generator)
                       for _ in range(0, pairs, items)])[:pairs]
    second = torch.randint(0, items - 1, (pairs,), generator=generator)
    second += (second >= first).long()  # step over the first item: uniform over the others
    composed = torch.cat([compose_canvas(images[first[begin:begin + 4096]],
                                         images[second[begin:begin + 4096]], side)
                          for begin in range(0, pairs, 4096)])
    return MultiFashionSet(composed, labels[first], labels[second])


class MultiLeNet(nn.Module):
    """conv 1->10 k5, max-pool 2, ReLU, conv 10->20 k5, max-pool 2, ReLU, fc -> 50, ReLU: the
    shared activation A; then, for the GradDrop run, a GradDropLayer; then two 10-way heads."""

    def __init__(self, side: int, graddrop_layer: Optional[graddrop.GradDropLayer]) -> None:
        super().__init__()
        map_side = ((side - 4) // 2 - 4) // 2
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.fc = nn.Linear(20 * map_side * map_side, SHARED_FEATURES)
        self.graddrop = graddrop_layer
        self.heads = nn.ModuleList([nn.Linear(SHARED_FEATURES, CLASSES) for _ in range(2)])

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        x = F.relu(F.max_pool2d(self.conv1(images), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        shared = F.relu(self.fc(x.flatten(1)))
        per_task = self.graddrop(shared) if self.graddrop is not None else (shared, shared)
        return [head(features) for head, features in zip(self.heads, per_task)]


def task_losses(model: MultiLeNet, images, labels_first, labels_second) -> List[torch.Tensor]:
    logits = model(images)
    return [F.cross_entropy(logits[0], labels_first), F.cross_entropy(logits[1], labels_second)]


def make_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def epoch_order(pairs: int, seed: int, epoch: int) -> torch.Tensor:
    # A generator of its own: GradDrop's draws come from the default generator and must not
    # shift the baseline's data order.
    return torch.randperm(pairs, generator=torch.Generator().manual_seed(seed * 1000003 + epoch))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epoch(models: Sequence[MultiLeNet], optimizers: Sequence[torch.optim.Optimizer],
                train: MultiFashionSet, order: torch.Tensor, batch_size: int
                ) -> List[Tuple[List[float], float]]:
    """One epoch of every model on the same batches; the models take turns batch by batch (who
    goes first alternates), so machine load falls on all alike. Returns per model the mean
    train loss of each task and the training seconds."""
    device = train.images.device
    order = order.to(device)
    batches = math.ceil(order.numel() / batch_size)
    loss_sums = [torch.zeros(2, device=device) for _ in models]
    seconds = [0.0 for _ in models]
    for model in models:
        model.train()
    for batch in range(batches):
        index = order[batch * batch_size:(batch + 1) * batch_size]
        images = train.images[index]
        labels_first, labels_second = train.labels_first[index], train.labels_second[index]
        for turn in range(len(models)):
            r = (turn + batch) % len(models)
            synchronize(device)
            start = time.perf_counter()
            losses = task_losses(models[r], images, labels_first, labels_second)
            optimizers[r].zero_grad()
            (losses[0] + losses[1]).backward()  # one backward: GradDrop sees both tasks at once
            optimizers[r].step()
            synchronize(device)
            seconds[r] += time.perf_counter() - start
            loss_sums[r] += torch.stack([loss.detach() for loss in losses])
    return [((loss_sums[r] / batches).tolist(), seconds[r]) for r in range(len(models))]


@torch.no_grad()
def evaluate(model: MultiLeNet, test: MultiFashionSet) -> List[float]:
    model.eval()
    correct = torch.zeros(2, dtype=torch.long, device=test.images.device)
    for begin in range(0, test.images.shape[0], EVALUATION_BATCH):
        end = begin + EVALUATION_BATCH
        logits = model(test.images[begin:end])
        correct[0] += (logits[0].argmax(1) == test.labels_first[begin:end]).sum()
        correct[1] += (logits[1].argmax(1) == test.labels_second[begin:end]).sum()
    return (correct.double() / test.images.shape[0]).tolist()


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    return stats.mean(values), (stats.stdev(values) if len(values) > 1 else 0.0)


def print_results_table(records: Dict[str, Dict[int, Tuple[List[float], List[float]]]]) -> None:
    """records[method][seed] = (last epoch's test accuracies, every epoch's seconds)."""
    seeds = len(records[METHODS[0]])
    with_std = seeds > 1
    width = 16 if with_std else 10
    header = "Test accuracy (%) after the last epoch"
    if with_std:
        header += f", mean +- std over {seeds} seeds"
    print(header + "; training seconds per epoch")
    print(f"{'method':<14}" + "".join(f"{name:>{width}}"
                                      for name in ("task 1", "task 2", "mean", "s/epoch")))

    def cell(values: Sequence[float], scale: float, digits: str) -> str:
        mean, std = mean_std(values)
        text = f"{scale * mean:{digits}}"
        return f"{text} +- {scale * std:.2f}" if with_std else text

    seconds_per_epoch = {}
    for method in METHODS:
        runs = records[method].values()
        first = [accuracies[0] for accuracies, _ in runs]
        second = [accuracies[1] for accuracies, _ in runs]
        both = [(a + b) / 2 for a, b in zip(first, second)]
        seconds = [s for _, epoch_seconds in runs for s in epoch_seconds]
        seconds_per_epoch[method] = stats.mean(seconds)
        print(f"{method:<14}" + "".join(f"{c:>{width}}" for c in (
            cell(first, 100, "6.2f"), cell(second, 100, "6.2f"), cell(both, 100, "6.2f"),
            cell(seconds, 1, "7.2f"))))
    ratio = seconds_per_epoch["graddrop"] / seconds_per_epoch["equal_weight"]
    print(f"GradDrop time overhead: {ratio:.3f}x the equal-weight time per epoch "
          f"({100 * (ratio - 1):+.1f}%)")


def parse_arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Multi-Fashion: equal loss weights against graddrop.GradDropLayer.")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                        help="sgd uses momentum 0.9")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated; several give mean +- std")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--train-size", type=int, default=60000, help="train pairs")
    parser.add_argument("--test-size", type=int, default=10000, help="test pairs")
    parser.add_argument("--canvas", type=int, choices=(28, 36), default=28,
                        help="28: resized (the literature's setting); 36: kept as composed")
    parser.add_argument("--pair-seed", type=int, default=2020)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    arguments = parser.parse_args(argv)
    try:
        arguments.seeds = [int(seed) for seed in arguments.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {arguments.seeds!r}")
    for name in ("epochs", "batch_size", "threads", "train_size", "test_size"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if arguments.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device=cuda: this torch sees no CUDA device")
    return arguments


def main(argv: Optional[Sequence[str]] = None) -> int:
    arguments = parse_arguments(argv)
    torch.set_num_threads(arguments.threads)
    device = torch.device(arguments.device)
    start = time.perf_counter()
    try:
        train_split = load_fashion_split(arguments.data_dir, "train")
        test_split = load_fashion_split(arguments.data_dir, "t10k")
    except DatasetError as error:
        print(f"multi_fashion: {error}", file=sys.stderr)
        return 1
    train = make_multi_fashion(*train_split, arguments.train_size, arguments.pair_seed,
                               arguments.canvas).to(device)
    test = make_multi_fashion(*test_split, arguments.test_size, arguments.pair_seed + 1,
                              arguments.canvas).to(device)
    print(f"data: Fashion-MNIST from {arguments.data_dir}; Multi-Fashion {arguments.train_size} "
          f"train pairs, {arguments.test_size} test pairs, {arguments.canvas}x{arguments.canvas} "
          f"(pair seed {arguments.pair_seed}), built in {time.perf_counter() - start:.1f}s")
    print(f"training: {arguments.epochs} epochs, batch {arguments.batch_size}, "
          f"{arguments.optimizer} lr {arguments.lr:g}, {arguments.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")

    records: Dict[str, Dict[int, Tuple[List[float], List[float]]]] = {m: {} for m in METHODS}
    for seed in arguments.seeds:
        torch.manual_seed(seed)
        models = [MultiLeNet(arguments.canvas, None),
                  MultiLeNet(arguments.canvas, graddrop.GradDropLayer(2))]
        # The GradDrop model starts from the baseline's weights, whatever its construction drew.
        models[1].load_state_dict(models[0].state_dict())
        if seed == arguments.seeds[0]:
            print(f"model: LeNet trunk, two 10-way heads; the GradDrop run adds {models[1].graddrop}")
        for model in models:
            model.to(device)
            # One untimed step's worth of forward and backward (allocator and kernel warm-up).
            rows = min(arguments.batch_size, arguments.train_size)
            losses = task_losses(model, train.images[:rows], train.labels_first[:rows],
                                 train.labels_second[:rows])
            (losses[0] + losses[1]).backward()
            model.zero_grad()
        optimizers = [make_optimizer(arguments.optimizer, model, arguments.lr) for model in models]
        epoch_seconds: List[List[float]] = [[], []]
        for epoch in range(1, arguments.epochs + 1):
            results = train_epoch(models, optimizers, train,
                                  epoch_order(arguments.train_size, seed, epoch),
                                  arguments.batch_size)
            for r, method in enumerate(METHODS):
                losses, seconds = results[r]
                accuracy = evaluate(models[r], test)
                epoch_seconds[r].append(seconds)
                records[method][seed] = (accuracy, epoch_seconds[r])
                print(f"seed {seed} epoch {epoch}/{arguments.epochs} {method:<12}  "
                      f"loss {losses[0]:.4f} {losses[1]:.4f}  "
                      f"test acc {100 * accuracy[0]:6.2f}% {100 * accuracy[1]:6.2f}%  "
                      f"train {seconds:.2f}s", flush=True)
    print()
    print_results_table(records)
    print(f"total time {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
