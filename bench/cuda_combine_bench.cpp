// The CUDA combine kernels against (a) the composed-ATen reference on the GPU (one operation at
// a time, the way Python libraries write GradDrop) and (b) a device-to-device copy, the
// memory-bandwidth bound (docs/performance.md).
//
// Every configuration: N elements (16M, 64M), n tasks (2, 4, 8), float32 and bfloat16, per
// element and marginalised ([256, N/256] and [4096, N/4096]). Times come from CUDA events around
// one call, after warm-up, as the median of many runs; inputs rotate across enough buffer sets
// that the data of a run is several times the L2 cache, so no run finds its inputs there.
// Bytes: the fused kernel's least traffic, (n + 2) * N * sizeof(T) (A and every g_i read once,
// the output written once); the copy moves (n + 2) * N * sizeof(T) bytes each way and is counted
// as bytes read plus bytes written. A summary table ends the run.
//
// Built with Google Benchmark (manual time, one benchmark per configuration and method) when it
// is found, else (GRADDROP_BENCH_STANDALONE) as a plain program with the same measurements.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include "graddrop/combine.h"
#include "graddrop/reference.h"

#ifndef GRADDROP_BENCH_STANDALONE
#include <benchmark/benchmark.h>
#endif

namespace {

constexpr int kWarmup = 3;

struct Config {
  int64_t numel;
  int64_t tasks;
  at::ScalarType dtype;
  int64_t rows;  // 0: per element; else marginalised over [rows, numel / rows]

  std::string name() const {
    const std::string mode = rows == 0 ? "per_element" : "marginal_rows" + std::to_string(rows);
    return mode + "/N" + std::to_string(numel >> 20) + "M/n" + std::to_string(tasks) + "/" +
           (dtype == at::kFloat ? "float32" : "bfloat16");
  }
  int64_t fused_bytes() const {
    return (tasks + 2) * numel * static_cast<int64_t>(c10::elementSize(dtype));
  }
  graddrop::GradDropOptions options() const {
    return graddrop::GradDropOptions(tasks).marginalize_batch(rows != 0);
  }
  std::vector<int64_t> shape() const {
    return rows == 0 ? std::vector<int64_t>{numel} : std::vector<int64_t>{rows, numel / rows};
  }
};

std::vector<Config> all_configs() {
  std::vector<Config> configs;
  for (const int64_t rows : {int64_t(0), int64_t(256), int64_t(4096)}) {
    for (const int64_t numel : {int64_t(16) << 20, int64_t(64) << 20}) {
      for (const int64_t tasks : {2, 4, 8}) {
        for (const auto dtype : {at::kFloat, at::kBFloat16}) {
          configs.push_back({numel, tasks, dtype, rows});
        }
      }
    }
  }
  return configs;
}

enum class Method { kFused, kReference, kCopy };

const char* method_name(Method method) {
  switch (method) {
    case Method::kFused:
      return "fused";
    case Method::kReference:
      return "reference";
    default:
      return "copy";
  }
}

// Runs per method: the reference is slow and its median steady after a few.
int runs_of(Method method) {
  return method == Method::kReference ? 10 : 50;
}

// Inputs of one configuration, rotated across buffer sets.
class Workload {
 public:
  Workload(const Config& config, Method method) : config_(config), method_(method) {
    const int64_t l2_bytes = at::cuda::getCurrentDeviceProperties()->l2CacheSize;
    const int64_t set_bytes = method == Method::kCopy ? 2 * config.fused_bytes()
                                                      : (config.tasks + 1) * config.numel *
                                                            int64_t(c10::elementSize(config.dtype));
    const int64_t sets = std::min<int64_t>(4, std::max<int64_t>(1, 4 * l2_bytes / set_bytes + 1));
    const auto on_gpu = at::TensorOptions().device(at::kCUDA).dtype(config.dtype);
    for (int64_t s = 0; s < sets; ++s) {
      Set set;
      if (method == Method::kCopy) {
        const int64_t elements = config.fused_bytes() / int64_t(c10::elementSize(config.dtype));
        set.activation = at::randn({elements}, on_gpu);
        set.copy_destination = at::empty_like(set.activation);
      } else {
        set.activation = at::randn(config.shape(), on_gpu);
        for (int64_t i = 0; i < config.tasks; ++i)
          set.grads.push_back(at::randn(config.shape(), on_gpu));
        if (method == Method::kReference) {
          const auto p_shape = graddrop::purity_shape(set.activation, config.options());
          set.uniform = at::rand(p_shape, on_gpu.dtype(at::kFloat));
        }
      }
      sets_.push_back(std::move(set));
    }
    at::cuda::device_synchronize();
  }

  int64_t sets() const { return static_cast<int64_t>(sets_.size()); }

  void run(int64_t index) {
    auto& set = sets_[static_cast<size_t>(index % sets())];
    switch (method_) {
      case Method::kFused:
        graddrop::combine(set.grads, set.activation, config_.options());
        break;
      case Method::kReference:
        graddrop::reference::combine_in(set.grads, set.activation, config_.options(), set.uniform,
                                        at::kFloat);
        break;
      default:
        set.copy_destination.copy_(set.activation);
    }
  }

  // Seconds of one run, from CUDA events on the current stream.
  double timed_run(int64_t index) {
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    const auto stream = at::cuda::getCurrentCUDAStream();
    start.record(stream);
    run(index);
    stop.record(stream);
    stop.synchronize();
    return static_cast<double>(start.elapsed_time(stop)) * 1e-3;
  }

 private:
  struct Set {
    at::Tensor activation;
    std::vector<at::Tensor> grads;
    at::Tensor uniform;
    at::Tensor copy_destination;
  };
  Config config_;
  Method method_;
  std::vector<Set> sets_;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t middle = values.size() / 2;
  return values.size() % 2 ? values[middle] : 0.5 * (values[middle - 1] + values[middle]);
}

// Median seconds per method and configuration, for the summary.
std::map<std::string, std::map<Method, double>>& results() {
  static std::map<std::string, std::map<Method, double>> table;
  return table;
}

// Bytes per second of a method's median time (the copy counts its reads and writes).
double bytes_per_second(const Config& config, Method method, double seconds) {
  const double bytes =
      static_cast<double>(config.fused_bytes()) * (method == Method::kCopy ? 2 : 1);
  return bytes / seconds;
}

void print_summary() {
  std::printf(
      "\nSummary (median times; fused and reference bytes = (n+2)*N*sizeof(T); copy bytes = "
      "read + written)\n");
  std::printf("%-34s %10s %12s %10s %9s %10s %10s %8s\n", "configuration", "fused us",
              "reference us", "copy us", "speed-up", "fused GB/s", "copy GB/s", "of copy");
  for (const auto& config : all_configs()) {
    const auto found = results().find(config.name());
    if (found == results().end()) continue;
    const auto& times = found->second;
    const auto time_of = [&](Method method) {
      const auto entry = times.find(method);
      return entry == times.end() ? 0.0 : entry->second;
    };
    const double fused = time_of(Method::kFused);
    const double reference = time_of(Method::kReference);
    const double copy = time_of(Method::kCopy);
    const double fused_rate = fused > 0 ? bytes_per_second(config, Method::kFused, fused) : 0.0;
    const double copy_rate = copy > 0 ? bytes_per_second(config, Method::kCopy, copy) : 0.0;
    std::printf("%-34s %10.1f %12.1f %10.1f %8.1fx %10.1f %10.1f %7.0f%%\n", config.name().c_str(),
                fused * 1e6, reference * 1e6, copy * 1e6,
                fused > 0 && reference > 0 ? reference / fused : 0.0, fused_rate * 1e-9,
                copy_rate * 1e-9, copy_rate > 0 ? 100.0 * fused_rate / copy_rate : 0.0);
  }
}

void print_device() {
  const auto* properties = at::cuda::getCurrentDeviceProperties();
  std::printf("device: %s, %d multiprocessors, L2 %d MB, torch %s\n", properties->name,
              properties->multiProcessorCount, properties->l2CacheSize >> 20, TORCH_VERSION);
}

#ifndef GRADDROP_BENCH_STANDALONE

void run_benchmark(benchmark::State& state, Config config, Method method) {
  Workload workload(config, method);
  for (int64_t w = 0; w < kWarmup * workload.sets(); ++w) workload.run(w);
  at::cuda::device_synchronize();
  std::vector<double> seconds;
  int64_t index = 0;
  for (auto _ : state) {
    const double elapsed = workload.timed_run(index++);
    state.SetIterationTime(elapsed);
    seconds.push_back(elapsed);
  }
  const double middle = median(seconds);
  results()[config.name()][method] = middle;
  state.counters["median_us"] = middle * 1e6;
  state.counters["bytes_per_second"] = bytes_per_second(config, method, middle);
  state.counters["sets"] = static_cast<double>(workload.sets());
}

}  // namespace

int main(int argc, char** argv) {
  if (!torch::cuda::is_available()) {
    std::printf("no CUDA GPU: nothing to benchmark\n");
    return 0;
  }
  print_device();
  for (const auto& config : all_configs()) {
    for (const auto method : {Method::kFused, Method::kReference, Method::kCopy}) {
      const std::string name = config.name() + "/" + method_name(method);
      benchmark::RegisterBenchmark(name.c_str(), run_benchmark, config, method)
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond)
          ->Iterations(runs_of(method));
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  print_summary();
  return 0;
}

#else  // GRADDROP_BENCH_STANDALONE

}  // namespace

// Usage: bench_cuda_combine_bench [--benchmark_filter=SUBSTRING]: runs the configurations whose
// name contains SUBSTRING (other --benchmark_* flags of the Google Benchmark build are ignored).
int main(int argc, char** argv) {
  if (!torch::cuda::is_available()) {
    std::printf("no CUDA GPU: nothing to benchmark\n");
    return 0;
  }
  print_device();
  std::string filter;
  const std::string filter_flag = "--benchmark_filter=";
  for (int a = 1; a < argc; ++a) {
    const std::string argument = argv[a];
    if (argument.rfind(filter_flag, 0) == 0) filter = argument.substr(filter_flag.size());
  }
  std::printf("%-50s %12s %14s %6s\n", "benchmark", "median us", "GB/s", "sets");
  for (const auto& config : all_configs()) {
    if (config.name().find(filter) == std::string::npos) continue;
    for (const auto method : {Method::kFused, Method::kReference, Method::kCopy}) {
      Workload workload(config, method);
      for (int64_t w = 0; w < kWarmup * workload.sets(); ++w) workload.run(w);
      at::cuda::device_synchronize();
      std::vector<double> seconds;
      for (int64_t r = 0; r < runs_of(method); ++r) seconds.push_back(workload.timed_run(r));
      const double middle = median(seconds);
      results()[config.name()][method] = middle;
      std::printf("%-50s %12.1f %14.1f %6lld\n",
                  (config.name() + "/" + method_name(method)).c_str(), middle * 1e6,
                  bytes_per_second(config, method, middle) * 1e-9,
                  static_cast<long long>(workload.sets()));
      std::fflush(stdout);
    }
  }
  print_summary();
  return 0;
}

#endif  // GRADDROP_BENCH_STANDALONE
