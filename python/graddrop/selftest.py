"""``python -m graddrop.selftest``: checks graddrop's kernels on this machine and prints a report
to paste into a bug report. Every CPU instruction set is compared with the baseline; on every
visible GPU the CUDA kernels are compared with the CPU kernels bit for bit (both modes, four
dtypes, 1 to 40 tasks, each launch path the planner chooses there), plus a side stream, a CUDA
graph replay and a short bandwidth check. Exit status 0 only when every check passes; without a
GPU the GPU checks are reported as skipped. The same checks as the C++ ``graddrop_selftest``."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Tuple

import torch

import graddrop


def run(bandwidth: bool = True, perturb: bool = False) -> Tuple[bool, str]:
    """Runs the self-test; returns ``(passed, report)``."""
    passed, report = torch.ops.graddrop.selftest(bandwidth, perturb)
    header = (f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA "
              f"{torch.version.cuda}), graddrop package {graddrop.__version__} "
              f"(CUDA kernels {'built' if graddrop.CUDA_KERNELS else 'not built'})\n")
    return passed, header + report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graddrop.selftest", description=__doc__)
    parser.add_argument("--no-bandwidth", action="store_true",
                        help="skip the short bandwidth check on each GPU")
    parser.add_argument("--perturb", action="store_true",
                        help="flip a bit of every output under test: the report must then show "
                             "failures (proves the checks can fail)")
    arguments = parser.parse_args(argv)
    passed, report = run(bandwidth=not arguments.no_bandwidth, perturb=arguments.perturb)
    print(report, end="")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
