// graddrop::combine on the CPU against the composed-ATen formula and against a plain copy of the
// same number of bytes, all in one run (docs/performance.md): for N elements of type T and n
// tasks the least traffic is (n + 2) * N * sizeof(T) bytes (read A and every g_i, write out),
// and every variant is reported as that many bytes per second, so ratios compare times.
//
//   fused/<mode>/<dtype>/n<n>/N<N>      graddrop::combine with a fixed seed (Philox U)
//   fused_plain/..., fused_stream/...   the same with normal or streaming stores only
//                                      (--compare_stores)
//   fused_into/<mode>/<dtype>/n<n>/N<N> graddrop::combine_out a preallocated output, as the
//                                      layer's backward runs it (--compare_into): no fresh
//                                      output, so none of its page faults
//   reference/<mode>/<dtype>/n<n>/N<N>  reference::combine_in(..., at::kFloat): one ATen
//                                      operation at a time, float32, the same U
//   copy/<dtype>/n<n>/N<N>             dst.copy_(src), each (n + 2) * N * sizeof(T) / 2 bytes
//   draw/<capability>                  the Philox draw of U alone, 64K values in the L2 cache
//                                      (pure arithmetic: per-element mode draws one per element)
//
// mode: elem (per element, activation [N]) or marg (marginalised, [256, N / 256]).
// After the runs a summary table gives, per configuration, fused / reference speed-up and fused
// bytes/s as a fraction of the copy's.
//
// Flags (besides Google Benchmark's, e.g. --benchmark_filter=fused/elem/float32 and
// --benchmark_min_time=0.2):
//   --max_n=16M     largest N (also GRADDROP_BENCH_MAX_N); default 64M
//   --sizes=512K,2M the Ns to run instead (marginalised: [256, N / 256]; 512K and 2M are the
//                   many-task shapes [256, 2048] and [256, 8192])
//   --threads=2     ATen threads (also GRADDROP_BENCH_THREADS); default 2
//   --tasks=2,4     task counts; default 2,4,8
//   --dtypes=float32,bfloat16
//   --no_reference  skip the composed-ATen runs (the slow part)
//   --capability=avx2  the kernels' instruction set (baseline, avx2, avx512; default: the best
//                   the CPU runs, or GRADDROP_CPU_CAPABILITY)
//   --compare_stores  also run fused_plain/... (normal stores only) and fused_stream/... (the
//                   output always streamed past the cache); the default (fused/) streams outputs
//                   larger than the last-level cache (cpu::Streaming)
//   --compare_into  also run fused_into/...
// The full matrix (4 N x 3 n x 2 dtypes x 2 modes) takes about 5-8 minutes on 2 cores, most of
// it in the reference at N = 64M; the largest configuration (64M x n = 8, float32) holds 2.5 GB
// of inputs and the reference about 8 GB more while it runs.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "cpu/cpu_capability.h"
#include "graddrop/combine.h"
#include "graddrop/reference.h"

namespace {

constexpr int64_t kRows = 256;  // marginalised: [kRows, N / kRows]

struct Settings {
  int64_t max_n = int64_t(64) << 20;
  // The Ns to run (--sizes); empty: 1M, 4M, 16M, 64M up to max_n.
  std::vector<int64_t> sizes;
  int threads = 2;
  std::vector<int64_t> tasks = {2, 4, 8};
  std::vector<at::ScalarType> dtypes = {at::kFloat, at::kBFloat16};
  bool reference = true;
  bool compare_stores = false;
  bool compare_into = false;
  std::string capability;  // empty: the library's choice
};

int64_t parse_size(const std::string& text) {
  const char suffix = text.empty() ? '\0' : text.back();
  const int64_t value = std::atoll(text.c_str());
  if (suffix == 'M' || suffix == 'm') return value << 20;
  if (suffix == 'K' || suffix == 'k') return value << 10;
  return value;
}

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, ',')) parts.push_back(part);
  return parts;
}

std::string dtype_name(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? "bfloat16" : dtype == at::kHalf ? "float16"
         : dtype == at::kDouble ? "float64" : "float32";
}

std::string size_name(int64_t n) {
  if (n % (int64_t(1) << 20) == 0) return std::to_string(n >> 20) + "M";
  if (n % (int64_t(1) << 10) == 0) return std::to_string(n >> 10) + "K";
  return std::to_string(n);
}

// Removes our flags from argv (Google Benchmark rejects unknown ones).
Settings parse_settings(int* argc, char** argv) {
  Settings settings;
  if (const char* value = std::getenv("GRADDROP_BENCH_MAX_N")) settings.max_n = parse_size(value);
  if (const char* value = std::getenv("GRADDROP_BENCH_THREADS")) {
    settings.threads = std::atoi(value);
  }
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string argument = argv[i];
    auto value_of = [&](const char* flag) -> const char* {
      const size_t length = std::strlen(flag);
      return argument.compare(0, length, flag) == 0 ? argv[i] + length : nullptr;
    };
    if (const char* value = value_of("--max_n=")) {
      settings.max_n = parse_size(value);
    } else if (const char* value = value_of("--sizes=")) {
      for (const auto& part : split(value)) settings.sizes.push_back(parse_size(part));
    } else if (const char* value = value_of("--threads=")) {
      settings.threads = std::atoi(value);
    } else if (const char* value = value_of("--tasks=")) {
      settings.tasks.clear();
      for (const auto& part : split(value)) settings.tasks.push_back(std::atoll(part.c_str()));
    } else if (const char* value = value_of("--dtypes=")) {
      settings.dtypes.clear();
      for (const auto& part : split(value)) {
        settings.dtypes.push_back(part == "bfloat16" ? at::kBFloat16
                                  : part == "float16" ? at::kHalf
                                  : part == "float64" ? at::kDouble : at::kFloat);
      }
    } else if (const char* value = value_of("--capability=")) {
      settings.capability = value;
    } else if (argument == "--no_reference") {
      settings.reference = false;
    } else if (argument == "--compare_stores") {
      settings.compare_stores = true;
    } else if (argument == "--compare_into") {
      settings.compare_into = true;
    } else {
      argv[kept++] = argv[i];
    }
  }
  *argc = kept;
  return settings;
}

struct Config {
  int64_t numel;
  int64_t tasks;
  at::ScalarType dtype;
  int64_t bytes() const {
    return (tasks + 2) * numel * static_cast<int64_t>(c10::elementSize(dtype));
  }
  std::string key() const {
    return dtype_name(dtype) + "/n" + std::to_string(tasks) + "/N" + size_name(numel);
  }
};

// The inputs of one configuration, kept while its benchmarks run (they are registered one
// configuration after the other), then replaced: at most one configuration in memory.
struct Inputs {
  Config config;
  at::Tensor activation;  // [kRows, N / kRows]
  std::vector<at::Tensor> grads;
  at::Tensor uniform_per_element;  // [kRows, N / kRows], float32
  at::Tensor uniform_marginalized;  // [N / kRows], float32
  at::Tensor copy_source, copy_destination;
};

Inputs& inputs_for(const Config& config) {
  static std::unique_ptr<Inputs> inputs;
  if (inputs && inputs->config.key() == config.key()) return *inputs;
  inputs.reset();
  auto fresh = std::make_unique<Inputs>();
  fresh->config = config;
  auto generator = at::detail::createCPUGenerator(1234);
  const auto options = at::TensorOptions().dtype(at::kFloat);
  const std::vector<int64_t> shape = {kRows, config.numel / kRows};
  fresh->activation = at::randn(shape, generator, options).to(config.dtype);
  for (int64_t task = 0; task < config.tasks; ++task) {
    fresh->grads.push_back(at::randn(shape, generator, options).to(config.dtype));
  }
  fresh->uniform_per_element = at::rand(shape, generator, options);
  fresh->uniform_marginalized = at::rand({config.numel / kRows}, generator, options);
  const int64_t half = config.bytes() / 2 / static_cast<int64_t>(c10::elementSize(config.dtype));
  fresh->copy_source = at::randn({half}, generator, options).to(config.dtype);
  fresh->copy_destination = at::zeros({half}, options.dtype(config.dtype));
  inputs = std::move(fresh);
  return *inputs;
}

graddrop::GradDropOptions options_for(const Config& config, bool marginalize) {
  return graddrop::GradDropOptions(config.tasks).marginalize_batch(marginalize).seed(1);
}

void run_fused(benchmark::State& state, Config config, bool marginalize,
               graddrop::cpu::Streaming streaming) {
  auto& inputs = inputs_for(config);
  const auto options = options_for(config, marginalize);
  graddrop::cpu::set_streaming(streaming);
  // Untimed first calls: a process's first large allocations may wait longer for the OS (and,
  // in a VM, for the host) than later ones; a training loop sees the steady state.
  for (int warm = 0; warm < 2; ++warm) graddrop::combine(inputs.grads, inputs.activation, options);
  for (auto _ : state) {
    auto output = graddrop::combine(inputs.grads, inputs.activation, options);
    benchmark::DoNotOptimize(output.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * config.bytes());
  graddrop::cpu::set_streaming(graddrop::cpu::Streaming::kAuto);
}

void run_fused_into(benchmark::State& state, Config config, bool marginalize) {
  auto& inputs = inputs_for(config);
  const auto options = options_for(config, marginalize);
  auto output = at::zeros_like(inputs.activation);  // touched once, before the timing
  for (int warm = 0; warm < 2; ++warm) {
    graddrop::combine_out(output, inputs.grads, inputs.activation, options);
  }
  for (auto _ : state) {
    graddrop::combine_out(output, inputs.grads, inputs.activation, options);
    benchmark::DoNotOptimize(output.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * config.bytes());
}

void run_reference(benchmark::State& state, Config config, bool marginalize) {
  auto& inputs = inputs_for(config);
  const auto options = options_for(config, marginalize);
  const auto& uniform = marginalize ? inputs.uniform_marginalized : inputs.uniform_per_element;
  graddrop::reference::combine_in(inputs.grads, inputs.activation, options, uniform, at::kFloat);
  for (auto _ : state) {
    auto output = graddrop::reference::combine_in(inputs.grads, inputs.activation, options,
                                                  uniform, at::kFloat);
    benchmark::DoNotOptimize(output.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * config.bytes());
}

void run_copy(benchmark::State& state, Config config) {
  auto& inputs = inputs_for(config);
  inputs.copy_destination.copy_(inputs.copy_source);
  for (auto _ : state) {
    inputs.copy_destination.copy_(inputs.copy_source);
    benchmark::DoNotOptimize(inputs.copy_destination.data_ptr());
  }
  state.SetBytesProcessed(state.iterations() * config.bytes());
}

void run_draw(benchmark::State& state, graddrop::cpu::Capability capability) {
  constexpr int64_t kValues = 65536;
  std::vector<float> uniform(kValues);
  for (auto _ : state) {
    graddrop::cpu::draw_uniform(capability, 1, 0, 0, kValues, uniform.data());
    benchmark::DoNotOptimize(uniform.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * kValues);
}

// Keeps each benchmark's best seconds per iteration (over --benchmark_repetitions) for the
// summary, and prints as usual.
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& run : runs) {
      if (run.error_occurred || run.iterations == 0 || run.run_type != Run::RT_Iteration) continue;
      const double seconds = run.real_accumulated_time / static_cast<double>(run.iterations);
      auto& best = seconds_[run.run_name.function_name];
      if (best == 0.0 || seconds < best) best = seconds;
    }
    ConsoleReporter::ReportRuns(runs);
  }
  const std::map<std::string, double>& seconds() const { return seconds_; }

 private:
  std::map<std::string, double> seconds_;
};

std::string cpu_model() {
  std::ifstream info("/proc/cpuinfo");
  std::string line;
  while (std::getline(info, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

double lookup(const std::map<std::string, double>& seconds, const std::string& name) {
  const auto found = seconds.find(name);
  return found == seconds.end() ? 0.0 : found->second;
}

void print_summary(const std::vector<Config>& configs,
                   const std::map<std::string, double>& seconds) {
  std::printf("\nSummary: bytes/s of (n + 2) * N * sizeof(T); fused/ref = speed-up over the "
              "composed-ATen formula, fused/copy = fraction of the same-run copy bytes/s\n");
  std::printf("%-6s %-9s %3s %5s | %10s %10s %10s %10s %10s %10s | %9s %10s %10s\n", "mode",
              "dtype", "n", "N", "fused GB/s", "plain GB/s", "stream GB/s", "into GB/s",
              "ref GB/s", "copy GB/s", "fused/ref", "fused/copy", "into/copy");
  for (const char* mode : {"elem", "marg"}) {
    for (const auto& config : configs) {
      const double bytes = static_cast<double>(config.bytes());
      // Seconds per call of a variant of this mode and configuration (0 when it did not run).
      auto time_of = [&](const std::string& variant) {
        return lookup(seconds, variant + "/" + mode + "/" + config.key());
      };
      const double fused = time_of("fused");
      if (fused == 0.0) continue;
      const double into = time_of("fused_into");
      const double ref = time_of("reference");
      const double copy = lookup(seconds, "copy/" + config.key());
      // "-" where a variant did not run.
      auto text = [](bool known, const char* format, double value) {
        char buffer[32] = "-";
        if (known) std::snprintf(buffer, sizeof(buffer), format, value);
        return std::string(buffer);
      };
      auto rate = [&](double time) { return text(time > 0.0, "%.2f", bytes / time / 1e9); };
      auto copy_share = [&](double time) {
        return text(copy > 0.0 && time > 0.0, "%.0f%%", 100.0 * copy / time);
      };
      std::printf("%-6s %-9s %3lld %5s | %10s %10s %10s %10s %10s %10s | %9s %10s %10s\n",
                  mode, dtype_name(config.dtype).c_str(), static_cast<long long>(config.tasks),
                  size_name(config.numel).c_str(), rate(fused).c_str(),
                  rate(time_of("fused_plain")).c_str(), rate(time_of("fused_stream")).c_str(),
                  rate(into).c_str(), rate(ref).c_str(), rate(copy).c_str(),
                  text(ref > 0.0, "%.1fx", ref / fused).c_str(), copy_share(fused).c_str(),
                  copy_share(into).c_str());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Settings settings = parse_settings(&argc, argv);
  at::set_num_threads(settings.threads);
  std::printf("graddrop CPU combine benchmark: %d ATen threads (at::get_num_threads), "
              "%u hardware threads, CPU %s\n",
              at::get_num_threads(), std::thread::hardware_concurrency(), cpu_model().c_str());
  for (auto level : graddrop::cpu::supported_capabilities()) {
    if (graddrop::cpu::to_string(level) == settings.capability) {
      graddrop::cpu::set_active_capability(level);
    }
  }
  std::printf("kernels: %s, max N %s\n",
              graddrop::cpu::to_string(graddrop::cpu::active_capability()).c_str(),
              size_name(settings.max_n).c_str());

  std::vector<Config> configs;
  std::vector<int64_t> sizes = settings.sizes;
  if (sizes.empty()) {
    for (int64_t numel : {int64_t(1) << 20, int64_t(4) << 20, int64_t(16) << 20,
                          int64_t(64) << 20}) {
      if (numel <= settings.max_n) sizes.push_back(numel);
    }
  }
  for (int64_t numel : sizes) {
    for (auto dtype : settings.dtypes) {
      for (int64_t tasks : settings.tasks) configs.push_back({numel, tasks, dtype});
    }
  }
  for (const auto& config : configs) {
    for (bool marginalize : {false, true}) {
      const std::string mode = marginalize ? "marg/" : "elem/";
      benchmark::RegisterBenchmark(("fused/" + mode + config.key()).c_str(), run_fused, config,
                                   marginalize, graddrop::cpu::Streaming::kAuto)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      if (settings.compare_stores) {
        benchmark::RegisterBenchmark(("fused_plain/" + mode + config.key()).c_str(), run_fused,
                                     config, marginalize, graddrop::cpu::Streaming::kNever)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
        benchmark::RegisterBenchmark(("fused_stream/" + mode + config.key()).c_str(), run_fused,
                                     config, marginalize, graddrop::cpu::Streaming::kAlways)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
      if (settings.compare_into) {
        benchmark::RegisterBenchmark(("fused_into/" + mode + config.key()).c_str(),
                                     run_fused_into, config, marginalize)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
      if (settings.reference) {
        benchmark::RegisterBenchmark(("reference/" + mode + config.key()).c_str(), run_reference,
                                     config, marginalize)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
    }
    benchmark::RegisterBenchmark(("copy/" + config.key()).c_str(), run_copy, config)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }

  for (auto level : graddrop::cpu::supported_capabilities()) {
    benchmark::RegisterBenchmark(("draw/" + graddrop::cpu::to_string(level)).c_str(), run_draw,
                                 level)
        ->Unit(benchmark::kMicrosecond);
  }

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  print_summary(configs, reporter.seconds());
  benchmark::Shutdown();
  return 0;
}
