#!/usr/bin/env bash
# Two builds of libgraddrop side by side: runs bench_cpu_combine_bench ROUNDS times per build,
# alternating the builds process by process (on a shared or virtual machine the same binary
# varies by up to 2x between processes, so one run each compares nothing), and prints every
# summary line prefixed with the build's name, then the median per configuration.
#
#   bash bench/compare_builds.sh ROUNDS BEFORE_LIB_DIR AFTER_LIB_DIR [benchmark flags...]
#
# A *_LIB_DIR holds a libgraddrop.so.0 (copy build-cpu/src/libgraddrop.so.0 of each commit).
# The benchmark binary is ./build/bench/bench_cpu_combine_bench (GRADDROP_BENCH overrides it);
# its run path is overridden with LD_LIBRARY_PATH, so both builds run the same benchmark code.
# Example (docs/performance.md, "Many tasks"):
#   bash bench/compare_builds.sh 3 /tmp/before /tmp/after --sizes=512K,2M --tasks=16,40,64 \
#     --dtypes=float32 --compare_into --benchmark_min_time=0.2
set -euo pipefail
rounds=$1 before=$2 after=$3
shift 3
bench=${GRADDROP_BENCH:-./build/bench/bench_cpu_combine_bench}
lines=$(mktemp)
trap 'rm -f "$lines"' EXIT
for _ in $(seq "$rounds"); do
  for build in before after; do
    dir=$before
    [ "$build" = after ] && dir=$after
    LD_LIBRARY_PATH="$dir" "$bench" "$@" |
      awk -v build="$build" '/^(elem|marg) /{print build, $0}' | tee -a "$lines"
  done
done
echo
echo "medians over $rounds processes per build (GB/s; fused, out=, composed, copy):"
python3 - "$lines" <<'PY'
import collections, statistics, sys
cells = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    words = line.split()
    build, key = words[0], " ".join(words[1:5])
    values = [w for w in words[6:] if w != "|"]
    for name, value in zip(["fused", "plain", "stream", "out", "composed", "copy"], values):
        if value != "-":
            cells[key][build + " " + name].append(float(value))
for key, columns in cells.items():
    median = {name: statistics.median(values) for name, values in columns.items()}
    text = "  ".join(f"{name} {value:.2f}" for name, value in sorted(median.items()))
    print(f"{key}: {text}")
PY
