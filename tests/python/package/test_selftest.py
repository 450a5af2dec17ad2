"""python -m graddrop.selftest and verify mode from Python."""
import subprocess
import sys

import torch

import graddrop
import graddrop.selftest


def run_module(*arguments):
    return subprocess.run([sys.executable, "-m", "graddrop.selftest", "--no-bandwidth",
                           *arguments], capture_output=True, text=True, timeout=600)


def test_selftest_passes_and_reports_what_it_skipped():
    result = run_module()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"torch {torch.__version__}" in result.stdout
    assert "PASSED" in result.stdout and " 0 failed" in result.stdout
    if not torch.cuda.is_available():
        assert "skip  GPU checks" in result.stdout


def test_selftest_reports_a_perturbed_output():
    result = run_module("--perturb")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  " in result.stdout and "element 0 of" in result.stdout
    assert "FAILED" in result.stdout


def test_run_returns_the_verdict_and_the_report():
    passed, report = graddrop.selftest.run(bandwidth=False)
    assert passed and "graddrop 0.1.0 self-test" in report


def test_verify_mode_switches():
    assert not graddrop.verify_enabled()
    graddrop.set_verify(True)
    try:
        assert graddrop.verify_enabled()
        # CPU calls are never verified (the CPU kernel is the reference): same result.
        activation = torch.randn(8, 6)
        grads = [torch.randn(8, 6) for _ in range(2)]
        assert torch.equal(graddrop.combine(grads, activation, seed=3),
                           graddrop.combine(grads, activation, seed=3))
    finally:
        graddrop.set_verify(False)
    assert not graddrop.verify_enabled()
