"""The installed graddrop package's tests (scripts/test.sh installs it into .venv first).

Every random test draws from a seed printed once per run; GRADDROP_TEST_SEED=<n> replays it.
"""
import os
import random

import pytest
import torch

SEED = int(os.environ.get("GRADDROP_TEST_SEED", random.randrange(1 << 30)))


def pytest_report_header(config):
    return f"graddrop package tests: seed {SEED} (replay with GRADDROP_TEST_SEED={SEED})"


@pytest.fixture
def seed():
    return SEED


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(SEED)


@pytest.fixture(autouse=True)
def few_threads():
    # The machines running CI share two cores between several jobs.
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)
