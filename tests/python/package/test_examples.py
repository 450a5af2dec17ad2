"""The Python examples run as a user runs them (a fresh interpreter, the installed package), so
the README's quickstart and examples/python/multi_fashion.py cannot rot."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "python"
FASHION_DATA = "/usr/share/datasets/fashion-mnist"


def run_example(name, *arguments, timeout=240):
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *arguments],
                            capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(result.stdout, result.stderr, sep="\n")
    return result


def test_quickstart_trains_and_reports_statistics():
    result = run_example("quickstart.py", "100")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("GradDropLayer(num_tasks=2,")
    rows = re.findall(r"^step +(\d+)  loss_a +([0-9.]+)  loss_b +([0-9.]+)  conflicts ([0-9.]+)  "
                      r"mean purity ([0-9.]+)$", result.stdout, re.MULTILINE)
    assert [int(row[0]) for row in rows] == [1, 50, 100]
    for _, loss_a, loss_b, conflicts, purity in rows:
        assert 0.0 <= float(conflicts) <= 1.0 and 0.0 <= float(purity) <= 1.0
    # The two conflicting tasks still both learn: each loss falls well below its first value.
    first, last = rows[0], rows[-1]
    assert float(last[1]) < 0.5 * float(first[1]) and float(last[2]) < 0.5 * float(first[2])
    # The tasks were built to conflict: GradDrop saw conflicting signs at the first step.
    assert float(first[3]) > 0.0


@pytest.mark.skipif(not os.path.isdir(FASHION_DATA),
                    reason=f"no Fashion-MNIST at {FASHION_DATA} (Debian's dataset-fashion-mnist; "
                    "scripts/setup.sh installs it)")
def test_multi_fashion_on_a_subset_prints_the_results_table(tmp_path):
    result = run_example("multi_fashion.py", "--train-size=2000", "--test-size=500",
                         "--epochs=3", "--batch-size=32", "--threads=1")
    assert result.returncode == 0, result.stderr
    assert "Multi-Fashion 2000 train pairs, 500 test pairs, 28x28" in result.stdout
    epochs = re.findall(r"^seed 0 epoch (\d)/3 (equal_weight|graddrop) +loss ([0-9.]+) ([0-9.]+) "
                        r" test acc +([0-9.]+)% +([0-9.]+)%  train ([0-9.]+)s$",
                        result.stdout, re.MULTILINE)
    assert [(e[0], e[1]) for e in epochs] == [(str(epoch), method) for epoch in (1, 2, 3)
                                               for method in ("equal_weight", "graddrop")]
    table = re.findall(r"^(equal_weight|graddrop) +([0-9.]+) +([0-9.]+) +([0-9.]+) +([0-9.]+)$",
                       result.stdout, re.MULTILINE)
    assert [row[0] for row in table] == ["equal_weight", "graddrop"]
    for method, task_1, task_2, mean, seconds in table:
        for accuracy in (task_1, task_2, mean):
            assert 0.0 <= float(accuracy) <= 100.0
            # 10 classes: chance is 10 %; 2000 pairs and three epochs reach about 55 %.
            assert float(accuracy) > 30.0, f"{method} at {accuracy} % on the subset"
        assert float(seconds) > 0.0
    assert re.search(r"^GradDrop time overhead: [0-9.]+x the equal-weight time per epoch "
                     r"\([+-][0-9.]+%\)$", result.stdout, re.MULTILINE)


def test_multi_fashion_names_the_package_when_the_data_is_missing(tmp_path):
    result = run_example("multi_fashion.py", f"--data-dir={tmp_path / 'none'}", "--epochs=1")
    assert result.returncode == 1
    assert "file not found" in result.stderr and "dataset-fashion-mnist" in result.stderr
