// GradDrop's cost in a whole training step on the CPU: the quick-start model (examples/
// quickstart.cpp: MLP trunk Linear(32, h)-ReLU-Linear(h, h)-ReLU, two Linear(h, 1) heads,
// batch 128, Adam) trained with equal-weight summed losses and with a GradDropLayer between
// trunk and heads, on the same data, in one run. Trunk widths: h = 64 (the quick start), 512
// and 4096.
//
//   step/<equal|split_node|graddrop|graddrop_stats>/h<h>
//   paired/<split_node|graddrop>/h<h>
//
// split_node is a diagnostic: GradDropLayer's autograd shape (a custom node with one aliased
// output per head) with the plain sum as backward, so the cost of the node and the cost of the
// combine operator can be told apart. The summary prints each width's step times over the
// equal-weight step time (median of the repetitions: steps this short vary by +-20% from one
// repetition to the next on a shared machine). The paired benchmarks alternate a variant's steps
// with equal-weight steps in one loop and report the ratio of the totals, which drift cannot
// move: the figure to quote.
//
// Flags (besides Google Benchmark's): --threads=2 (also GRADDROP_BENCH_THREADS).
// Default repetitions: 9 (override with --benchmark_repetitions).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "graddrop/graddrop.h"

namespace {

constexpr int64_t kInputs = 32;
constexpr int64_t kBatch = 128;
constexpr int64_t kBatches = 8;  // cycled; the same for every variant

enum class Variant { kEqual, kSplitNode, kGradDrop, kGradDropStatistics };

const char* variant_name(Variant variant) {
  switch (variant) {
    case Variant::kEqual:
      return "equal";
    case Variant::kSplitNode:
      return "split_node";
    case Variant::kGradDrop:
      return "graddrop";
    default:
      return "graddrop_stats";
  }
}

// A diagnostic: the autograd shape of GradDropLayer (one custom node with one aliased output per
// head, whose backward receives every head's gradient) with the plain sum as its backward. The
// step time of this variant minus the equal-weight one is what the node itself costs; GradDrop
// minus this is the combine operator.
struct SplitNode : torch::autograd::Function<SplitNode> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const torch::Tensor& activation) {
    ctx->set_materialize_grads(false);
    return {activation.alias(), activation.alias()};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    if (!grads[0].defined()) return {grads[1]};
    if (!grads[1].defined()) return {grads[0]};
    return {grads[0] + grads[1]};
  }
};

struct TwoTaskModelImpl : torch::nn::Module {
  TwoTaskModelImpl(int64_t hidden, Variant variant)
      : trunk(register_module("trunk", torch::nn::Sequential(torch::nn::Linear(kInputs, hidden),
                                                            torch::nn::ReLU(),
                                                            torch::nn::Linear(hidden, hidden),
                                                            torch::nn::ReLU()))),
        head_a(register_module("head_a", torch::nn::Linear(hidden, 1))),
        head_b(register_module("head_b", torch::nn::Linear(hidden, 1))) {
    split_node = variant == Variant::kSplitNode;
    if (variant == Variant::kGradDrop || variant == Variant::kGradDropStatistics) {
      graddrop_layer = register_module(
          "graddrop", graddrop::GradDropLayer(graddrop::GradDropOptions(2).record_statistics(
                          variant == Variant::kGradDropStatistics)));
    }
  }

  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) {
    auto shared = trunk->forward(x);
    if (split_node) {
      auto outputs = SplitNode::apply(shared);
      return {head_a(outputs[0]), head_b(outputs[1])};
    }
    if (!graddrop_layer) return {head_a(shared), head_b(shared)};
    auto outputs = graddrop_layer(shared);
    return {head_a(outputs[0]), head_b(outputs[1])};
  }

  torch::nn::Sequential trunk;
  torch::nn::Linear head_a, head_b;
  graddrop::GradDropLayer graddrop_layer{nullptr};
  bool split_node = false;
};
TORCH_MODULE(TwoTaskModel);

struct Data {
  std::vector<torch::Tensor> inputs, targets_a, targets_b;
};

// Two regression tasks whose targets share a direction with opposite signs (as the quick start).
const Data& data() {
  static const Data batches = [] {
    torch::manual_seed(7);
    Data made;
    auto direction = torch::randn({kInputs, 1});
    auto private_a = torch::randn({kInputs, 1});
    auto private_b = torch::randn({kInputs, 1});
    for (int64_t b = 0; b < kBatches; ++b) {
      auto x = torch::randn({kBatch, kInputs});
      made.inputs.push_back(x);
      made.targets_a.push_back(torch::matmul(x, direction + private_a));
      made.targets_b.push_back(torch::matmul(x, -direction + private_b));
    }
    return made;
  }();
  return batches;
}

// The same initial weights for every variant.
TwoTaskModel seeded_model(int64_t hidden, Variant variant) {
  torch::manual_seed(0);
  return TwoTaskModel(hidden, variant);
}

// One model and its optimiser, stepping through the shared batches.
class Trainer {
 public:
  Trainer(int64_t hidden, Variant variant)
      : model_(seeded_model(hidden, variant)),
        optimizer_(model_->parameters(), torch::optim::AdamOptions(1e-3)) {
    for (int warm = 0; warm < 3; ++warm) step();
  }

  void step() {
    const auto& batches = data();
    const auto b = static_cast<size_t>(step_++ % kBatches);
    auto [prediction_a, prediction_b] = model_->forward(batches.inputs[b]);
    auto loss = torch::mse_loss(prediction_a, batches.targets_a[b]) +
                torch::mse_loss(prediction_b, batches.targets_b[b]);
    optimizer_.zero_grad();
    loss.backward();
    optimizer_.step();
  }

 private:
  TwoTaskModel model_;
  torch::optim::Adam optimizer_;
  int64_t step_ = 0;
};

void run_step(benchmark::State& state, int64_t hidden, Variant variant) {
  Trainer trainer(hidden, variant);
  for (auto _ : state) trainer.step();
  state.counters["steps/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

// An equal-weight step and a step of `variant` in every iteration, in alternating order, each
// timed on its own: both see the same machine at the same moment, so the ratio of their total
// times holds still where separately run benchmarks drift by +-20 % between repetitions (an
// equal-vs-equal pairing measured 1.004x and 1.007x at h = 64 and 512).
void run_paired(benchmark::State& state, int64_t hidden, Variant variant) {
  Trainer equal(hidden, Variant::kEqual);
  Trainer other(hidden, variant);
  using Clock = std::chrono::steady_clock;
  Clock::duration equal_time{}, other_time{};
  bool equal_first = true;
  for (auto _ : state) {
    for (int turn = 0; turn < 2; ++turn) {
      const bool run_equal = (turn == 0) == equal_first;
      const auto start = Clock::now();
      (run_equal ? equal : other).step();
      (run_equal ? equal_time : other_time) += Clock::now() - start;
    }
    equal_first = !equal_first;
  }
  state.counters["ratio"] = std::chrono::duration<double>(other_time).count() /
                            std::chrono::duration<double>(equal_time).count();
}

class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& run : runs) {
      if (run.error_occurred || run.iterations == 0 || run.run_type != Run::RT_Iteration) continue;
      const double seconds = run.real_accumulated_time / static_cast<double>(run.iterations);
      const double cpu = run.cpu_accumulated_time / static_cast<double>(run.iterations);
      wall_[run.run_name.function_name].push_back(seconds);
      cpu_[run.run_name.function_name].push_back(cpu);
      const auto ratio = run.counters.find("ratio");
      if (ratio != run.counters.end()) ratios_[run.run_name.function_name].push_back(ratio->second);
    }
    ConsoleReporter::ReportRuns(runs);
  }
  // The median over repetitions of each benchmark's seconds per step.
  std::map<std::string, double> median(bool cpu) const { return medians(cpu ? cpu_ : wall_); }
  // The median over repetitions of each paired benchmark's GradDrop / equal-weight ratio.
  std::map<std::string, double> median_ratio() const { return medians(ratios_); }

 private:
  static std::map<std::string, double> medians(
      const std::map<std::string, std::vector<double>>& samples) {
    std::map<std::string, double> result;
    for (const auto& entry : samples) {
      auto times = entry.second;
      std::sort(times.begin(), times.end());
      const size_t middle = times.size() / 2;
      result[entry.first] = times.size() % 2 ? times[middle]
                                             : 0.5 * (times[middle - 1] + times[middle]);
    }
    return result;
  }

  std::map<std::string, std::vector<double>> wall_;
  std::map<std::string, std::vector<double>> cpu_;
  std::map<std::string, std::vector<double>> ratios_;
};

// A summary cell: `value` formatted, or "-" for a variant the filter left out (value 0).
std::string cell(double value, const char* format) {
  char text[32] = "-";
  if (value > 0.0) std::snprintf(text, sizeof(text), format, value);
  return std::string(text);
}

std::string cpu_model() {
  std::ifstream info("/proc/cpuinfo");
  std::string line;
  while (std::getline(info, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  if (const char* value = std::getenv("GRADDROP_BENCH_THREADS")) threads = std::atoi(value);
  bool repetitions_given = false;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
      continue;
    }
    if (std::strncmp(argv[i], "--benchmark_repetitions", 23) == 0) repetitions_given = true;
    argv[kept++] = argv[i];
  }
  argc = kept;
  std::vector<char*> arguments(argv, argv + argc);
  std::string repetitions = "--benchmark_repetitions=9";
  if (!repetitions_given) arguments.push_back(repetitions.data());
  int argument_count = static_cast<int>(arguments.size());

  at::set_num_threads(threads);
  std::printf("graddrop training-step benchmark: %d ATen threads (at::get_num_threads), %u "
              "hardware threads, CPU %s, batch %lld\n",
              at::get_num_threads(), std::thread::hardware_concurrency(), cpu_model().c_str(),
              static_cast<long long>(kBatch));

  const std::vector<int64_t> widths = {64, 512, 4096};
  for (int64_t hidden : widths) {
    for (auto variant : {Variant::kEqual, Variant::kSplitNode, Variant::kGradDrop,
                         Variant::kGradDropStatistics}) {
      const std::string name =
          std::string("step/") + variant_name(variant) + "/h" + std::to_string(hidden);
      auto* bench = benchmark::RegisterBenchmark(name.c_str(), run_step, hidden, variant);
      bench->UseRealTime()->Unit(hidden >= 4096 ? benchmark::kMillisecond
                                                : benchmark::kMicrosecond);
    }
    for (auto variant : {Variant::kSplitNode, Variant::kGradDrop}) {
      const std::string paired = std::string("paired/") + variant_name(variant) + "/h" +
                                 std::to_string(hidden);
      benchmark::RegisterBenchmark(paired.c_str(), run_paired, hidden, variant)
          ->UseRealTime()
          ->Unit(hidden >= 4096 ? benchmark::kMillisecond : benchmark::kMicrosecond);
    }
  }
  benchmark::Initialize(&argument_count, arguments.data());
  if (benchmark::ReportUnrecognizedArguments(argument_count, arguments.data())) return 1;
  SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);

  // Wall time is what a user waits for; the main thread's CPU time is printed too because it is
  // far less disturbed by other processes on a shared machine (it undercounts the worker
  // thread of a parallel region, which matters only for the widest trunk).
  for (const bool cpu : {false, true}) {
    std::printf("\nSummary (median of the repetitions, %s): step time / equal-weight step time\n",
                cpu ? "main-thread CPU time" : "wall time");
    std::printf("%6s | %11s %11s %11s %11s | %10s %9s %11s\n", "h", "equal", "split node",
                "graddrop", "+stats", "split node", "graddrop", "+stats");
    const auto best = reporter.median(cpu);
    for (int64_t hidden : widths) {
      const std::string suffix = "/h" + std::to_string(hidden);
      auto time_of = [&](const char* variant) {
        const auto found = best.find(std::string("step/") + variant + suffix);
        return found == best.end() ? 0.0 : found->second;
      };
      const double equal = time_of("equal"), split = time_of("split_node"),
                   plain = time_of("graddrop"), stats = time_of("graddrop_stats");
      if (equal == 0.0) continue;
      std::printf("%6lld | %11s %11s %11s %11s | %10s %9s %11s\n",
                  static_cast<long long>(hidden), cell(equal * 1e6, "%.1fus").c_str(),
                  cell(split * 1e6, "%.1fus").c_str(), cell(plain * 1e6, "%.1fus").c_str(),
                  cell(stats * 1e6, "%.1fus").c_str(), cell(split / equal, "%.3fx").c_str(),
                  cell(plain / equal, "%.3fx").c_str(), cell(stats / equal, "%.3fx").c_str());
    }
  }
  std::printf("\nPaired (each variant's steps alternated with equal-weight steps in one loop; "
              "median over the repetitions of its total time / the equal-weight total):\n");
  std::printf("%6s | %10s %9s\n", "h", "split node", "graddrop");
  const auto ratios = reporter.median_ratio();
  for (int64_t hidden : widths) {
    auto ratio_of = [&](const char* variant) {
      const auto found =
          ratios.find(std::string("paired/") + variant + "/h" + std::to_string(hidden));
      return found == ratios.end() ? 0.0 : found->second;
    };
    if (ratio_of("graddrop") == 0.0 && ratio_of("split_node") == 0.0) continue;
    std::printf("%6lld | %10s %9s\n", static_cast<long long>(hidden),
                cell(ratio_of("split_node"), "%.3fx").c_str(),
                cell(ratio_of("graddrop"), "%.3fx").c_str());
  }
  benchmark::Shutdown();
  return 0;
}
