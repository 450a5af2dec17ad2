"""One training step of the same multitask model, side by side: equal weights, graddrop's
GradDropLayer, LibMTL 1.1.5's GradDrop weighting (rep_grad) and TorchJD 0.18.0's GradDrop
aggregator through mtl_backward. Run through bench/python_peers.sh, which installs the peers.

Model: an MLP trunk (depth x width, ReLU after every layer) shared by n linear heads,
cross-entropy per task, SGD. --trunk gives the trunk's layer sizes instead, input size first, then
each layer's output size (e.g. 512,2048,2048,512: Linear 512->2048, ReLU, 2048->2048, ReLU,
2048->512, ReLU), overriding --in-features, --width and --depth; the heads read the last size.
--preset celeba is the shape of the GradDrop paper's CelebA benchmark: it sets --trunk
512,2048,2048,512, --classes 2 (40 binary attributes as 2-class heads), --batch 256 and
--tasks 2,8,40 as defaults, so any of these given explicitly still wins. The full CelebA table
(2 threads, all four methods side by side, about 6 to 8 minutes on 2 cores; TorchJD at 40 tasks,
2 GiB and several seconds a step, is the slowest):
    bash bench/python_peers.sh --preset celeba --devices cpu --threads 2 --steps 15 --warmup 2

Timing: every method gets its own copy of the same initial model and the steps of the
methods are interleaved (round robin), so a change of machine load hits them alike; the median
step time is reported. Memory: a separate process per (method, n) runs a few steps and reports its
peak extra memory over the state before the first step (CPU: peak resident set from
/proc/self/status VmHWM; CUDA: torch.cuda.max_memory_allocated).
"""
from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

METHODS = ["equal", "graddrop", "libmtl", "torchjd"]


def import_libmtl_graddrop():
    """LibMTL's package __init__ imports its whole trainer stack (torchvision, ...); GradDrop needs
    only its weighting module, so load that without running the package's __init__."""
    if "LibMTL.weighting.GradDrop" in sys.modules:
        return sys.modules["LibMTL.weighting.GradDrop"].GradDrop
    spec = importlib.util.find_spec("LibMTL")
    if spec is None:
        raise ImportError("LibMTL is not installed (run bench/python_peers.sh)")
    for name, path in [("LibMTL", spec.submodule_search_locations[0]),
                       ("LibMTL.weighting", str(Path(spec.submodule_search_locations[0]) /
                                                "weighting"))]:
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [path]
            sys.modules[name] = module
    return importlib.import_module("LibMTL.weighting.GradDrop").GradDrop


PRESETS = {
    # The GradDrop paper's CelebA benchmark: 40 binary attributes on a 512-2048-2048-512 MLP.
    "celeba": {"trunk": "512,2048,2048,512", "classes": 2, "batch": 256, "tasks": "2,8,40"},
}


def trunk_sizes(args):
    """The trunk's layer sizes, input first: --trunk if given, else in_features then depth x
    width."""
    if args.trunk:
        sizes = [int(size) for size in args.trunk.split(",")]
        if len(sizes) < 2 or min(sizes) < 1:
            raise SystemExit(f"--trunk {args.trunk}: need an input size and at least one layer")
        return sizes
    return [args.in_features] + [args.width] * args.depth


class Model(nn.Module):
    def __init__(self, num_tasks, sizes, classes, head_hidden=0):
        super().__init__()
        layers = []
        for features, out in zip(sizes, sizes[1:]):
            layers += [nn.Linear(features, out), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        width = sizes[-1]

        def head():
            if not head_hidden:
                return nn.Linear(width, classes)
            return nn.Sequential(nn.Linear(width, head_hidden), nn.ReLU(),
                                 nn.Linear(head_hidden, classes))
        self.heads = nn.ModuleList(head() for _ in range(num_tasks))


class Step:
    """One method's training step on its own copy of the model."""

    def __init__(self, method, model, device):
        self.method = method
        self.model = copy.deepcopy(model).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3)
        num_tasks = len(self.model.heads)
        if method == "graddrop":
            import graddrop
            self.layer = graddrop.GradDropLayer(num_tasks)
        elif method == "libmtl":
            weighting = import_libmtl_graddrop()()
            weighting.task_num = num_tasks
            weighting.task_name = [f"task{i}" for i in range(num_tasks)]
            weighting.rep_grad = True
            weighting.device = torch.device(device)
            self.weighting = weighting
        elif method == "torchjd":
            from torchjd.aggregation import GradDrop
            self.aggregator = GradDrop()

    def losses(self, features, targets):
        return [nn.functional.cross_entropy(head(f), t)
                for head, f, t in zip(self.model.heads, features, targets)]

    def __call__(self, x, targets):
        self.optimizer.zero_grad(set_to_none=True)
        model, n = self.model, len(self.model.heads)
        if self.method == "equal":
            shared = model.trunk(x)
            sum(self.losses([shared] * n, targets)).backward()
        elif self.method == "graddrop":
            sum(self.losses(self.layer(model.trunk(x)), targets)).backward()
        elif self.method == "libmtl":
            # As LibMTL's AbsArchitecture does with rep_grad=True: the heads read detached
            # copies of the representation, the weighting backpropagates each task to its copy,
            # combines, and backpropagates once into the trunk.
            rep = model.trunk(x)
            w = self.weighting
            w.rep = rep
            w.rep_tasks = {name: rep.detach().clone().requires_grad_() for name in w.task_name}
            losses = self.losses([w.rep_tasks[name] for name in w.task_name], targets)
            w.backward(losses, leak=0.0)
        elif self.method == "torchjd":
            from torchjd.autojac import jac_to_grad, mtl_backward
            features = model.trunk(x)
            mtl_backward(self.losses([features] * n, targets), features=features)
            jac_to_grad(list(model.trunk.parameters()), self.aggregator)
        self.optimizer.step()


def make(args, num_tasks, device):
    torch.manual_seed(0)
    sizes = trunk_sizes(args)
    model = Model(num_tasks, sizes, args.classes, args.head_hidden)
    x = torch.randn(args.batch, sizes[0], device=device)
    targets = [torch.randint(0, args.classes, (args.batch,), device=device)
               for _ in range(num_tasks)]
    return model, x, targets


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_methods(args, num_tasks, device):
    model, x, targets = make(args, num_tasks, device)
    steps = {m: Step(m, model, device) for m in args.methods}
    for _ in range(args.warmup):
        for step in steps.values():
            step(x, targets)
    times = {m: [] for m in steps}
    for _ in range(args.steps):
        for method, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step(x, targets)
            synchronize(device)
            times[method].append(time.perf_counter() - start)
    return {m: statistics.median(t) * 1e3 for m, t in times.items()}


def resident_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_memory_mib(args, num_tasks, device, method):
    """Runs in its own process: peak extra memory of `method`'s steps."""
    model, x, targets = make(args, num_tasks, device)
    step = Step(method, model, device)
    if device == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(3):
            step(x, targets)
        synchronize(device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = resident_kib("VmRSS")
    for _ in range(3):
        step(x, targets)
    return (resident_kib("VmHWM") - base) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="celeba: --trunk 512,2048,2048,512 --classes 2 --batch 256 "
                             "--tasks 2,8,40 unless given explicitly")
    parser.add_argument("--tasks", default="2,4,8")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--in-features", type=int, default=512)
    parser.add_argument("--trunk", default=None,
                        help="layer sizes, input first, e.g. 512,2048,2048,512; overrides "
                             "--in-features, --width and --depth")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--head-hidden", type=int, default=0,
                        help="0: linear heads; else each head has one hidden layer this wide")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--devices", default="cpu,cuda", help="cuda is skipped without a GPU")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # child process
    preset = parser.parse_known_args()[0].preset
    if preset:  # the preset's values become defaults, so explicit flags still override them
        parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args()
    args.methods = args.methods.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.memory_of:
        device, num_tasks, method = args.memory_of.split(":")
        print(json.dumps(peak_memory_mib(args, int(num_tasks), device, method)))
        return

    devices = [d for d in args.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    sizes = trunk_sizes(args)
    heads = (f"{sizes[-1]} -> {args.head_hidden} -> {args.classes}" if args.head_hidden
             else f"{sizes[-1]} -> {args.classes}")
    trunk = ("-".join(map(str, sizes)) if args.trunk
             else f"{args.depth} x {args.width} (input {args.in_features})")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; trunk {trunk}, "
          f"heads {heads}, batch "
          f"{args.batch}; median of {args.steps} steps after {args.warmup} warm-up steps")
    rows = []
    for device in devices:
        for num_tasks in [int(n) for n in args.tasks.split(",")]:
            times = time_methods(args, num_tasks, device)
            for method in args.methods:
                child = subprocess.run(
                    [sys.executable, __file__, *sys.argv[1:], "--memory-of",
                     f"{device}:{num_tasks}:{method}"], capture_output=True, text=True, check=True)
                memory = json.loads(child.stdout.strip().splitlines()[-1])
                rows.append((device, num_tasks, method, times[method], memory,
                             times[method] / times["equal"] if "equal" in times else float("nan"),
                             times[method] / times["graddrop"] if "graddrop" in times
                             else float("nan")))
                print(f"  {device} n={num_tasks} {method}: {times[method]:.1f} ms, "
                      f"{memory:.0f} MiB", file=sys.stderr)
    print("| device | tasks | method | median step (ms) | peak step memory (MiB) "
          "| / equal weight | / GradDropLayer |")
    print("|---|---|---|---|---|---|---|")
    names = {"equal": "equal weights", "graddrop": "graddrop.GradDropLayer",
             "libmtl": "LibMTL GradDrop (rep_grad)", "torchjd": "TorchJD GradDrop (mtl_backward)"}
    for device, num_tasks, method, ms, mib, vs_equal, vs_ours in rows:
        print(f"| {device} | {num_tasks} | {names[method]} | {ms:.1f} | {mib:.0f} "
              f"| {vs_equal:.2f}x | {vs_ours:.2f}x |")


if __name__ == "__main__":
    main()
