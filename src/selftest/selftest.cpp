// The self-test (graddrop/selftest.h): the CPU kernels of every instruction set against the
// baseline, then on every GPU the CUDA kernels against the CPU kernels, with the same inputs and
// an explicit (seed, offset), so every output must agree bit for bit (docs/design.md, "The same
// bits on every device").
#include "graddrop/selftest.h"

#include <chrono>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/core/StreamGuard.h>
#include <torch/cuda.h>
#include <torch/library.h>
#include <torch/version.h>

#include "cpu/cpu_capability.h"
#include "graddrop/combine.h"
#include "graddrop/reference.h"
#include "ops/verify.h"
#include "selftest/compare.h"
#include "selftest/cuda_checks.h"
#include "selftest/hashed_inputs.h"

#ifndef GRADDROP_VERSION
#define GRADDROP_VERSION "unknown"
#endif

namespace graddrop {
namespace selftest {
namespace {

const CudaChecks*& registered_checks() {
  static const CudaChecks* checks = nullptr;
  return checks;
}

// One call of the grid: inputs from an integer hash (the same bytes on every machine), with
// exact zeros, and an explicit key.
struct Case {
  std::string name;
  std::vector<int64_t> sizes;
  at::ScalarType dtype = at::kFloat;
  int64_t num_tasks = 2;
  bool marginalize = true;
  bool keep_grad_norm = false;
  bool statistics = true;
};

struct Inputs {
  at::Tensor activation;
  std::vector<at::Tensor> grads;
  GradDropOptions options;
};

Inputs inputs_of(const Case& c, const at::Device& device) {
  Inputs inputs{hashed_tensor(c.sizes, c.dtype, 1).to(device), {}, GradDropOptions(c.num_tasks)};
  for (int64_t task = 0; task < c.num_tasks; ++task) {
    // One undefined gradient among several: an unused head.
    if (c.num_tasks >= 3 && task == 1) {
      inputs.grads.emplace_back();
      continue;
    }
    inputs.grads.push_back(hashed_tensor(c.sizes, c.dtype, 100 + static_cast<uint64_t>(task))
                               .to(device));
  }
  inputs.options.marginalize_batch(c.marginalize).keep_grad_norm(c.keep_grad_norm).seed(7).offset(
      3);
  if (c.num_tasks == 3) inputs.options.leak({0.0, 0.5, 1.0}).zero_sign(ZeroSign::kKeep);
  if (c.num_tasks == 8) inputs.options.keep_function(KeepFunction::kSigmoid).scale(2.0);
  if (c.dtype == at::kDouble) inputs.options.sign_source(SignSource::kActivationValue);
  return inputs;
}

struct Outcome {
  at::Tensor output;
  at::Tensor statistics;  // [kept per task, mean P, conflict fraction], float64 on the CPU
};

Outcome run_case(const Case& c, const at::Device& device) {
  const auto inputs = inputs_of(c, device);
  GradDropStatistics statistics;
  Outcome outcome;
  outcome.output = combine(inputs.grads, inputs.activation, inputs.options, nullopt, nullopt,
                           c.statistics ? &statistics : nullptr);
  std::vector<double> values = statistics.kept_fraction;
  values.push_back(statistics.mean_purity);
  values.push_back(statistics.conflict_fraction);
  outcome.statistics = at::tensor(values, at::kDouble);
  return outcome;
}

std::vector<Case> grid() {
  std::vector<Case> cases;
  for (bool marginalize : {true, false}) {
    for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
      for (int64_t n : {1, 2, 3, 8, 40}) {
        Case c;
        c.marginalize = marginalize;
        c.dtype = dtype;
        c.num_tasks = n;
        // Odd feature counts; more rows than one 512-row chunk in marginalised mode.
        c.sizes = marginalize ? std::vector<int64_t>{n >= 8 ? 67 : 601, 131}
                              : std::vector<int64_t>{3, 1001};
        c.keep_grad_norm = n == 2;
        std::ostringstream name;
        name << (marginalize ? "marginalised " : "per element ") << dtype
             << at::IntArrayRef(c.sizes)
             << " n=" << n << (c.keep_grad_norm ? " keep_grad_norm" : "");
        c.name = name.str();
        cases.push_back(c);
      }
    }
  }
  return cases;
}

// Flips the lowest bit of the first element (SelfTestOptions::perturb).
at::Tensor perturbed(const at::Tensor& tensor) {
  auto copy = tensor.cpu().contiguous().clone();
  if (copy.numel() > 0) static_cast<unsigned char*>(copy.data_ptr())[0] ^= 1u;
  return copy;
}

class Report {
 public:
  explicit Report(SelfTestResult& result) : result_(result) {}
  void line(const std::string& text) { text_ << text << "\n"; }
  void check(const std::string& name, const optional<std::string>& difference) {
    ++result_.checks;
    if (difference) {
      ++result_.failures;
      result_.passed = false;
      text_ << "  FAIL  " << name << ": " << *difference << "\n";
    } else {
      text_ << "  pass  " << name << "\n";
    }
  }
  void skip(const std::string& name, const std::string& why) {
    ++result_.skipped;
    text_ << "  skip  " << name << ": " << why << "\n";
  }
  std::string text() const { return text_.str(); }

 private:
  SelfTestResult& result_;
  std::ostringstream text_;
};

// Compares `actual` with `expected`: outputs bit for bit (keep_grad_norm and statistics within
// their tolerance when `exact` is false, for a device whose float64 sums run in its own order).
optional<std::string> difference_of(const Case& c, const Outcome& expected, const Outcome& actual,
                                    bool exact, bool perturb) {
  const auto output = perturb ? perturbed(actual.output) : actual.output.cpu();
  const auto expected_output = expected.output.cpu();
  optional<std::string> difference =
      exact || !c.keep_grad_norm
          ? first_bitwise_difference(expected_output, output)
          : first_difference_beyond(expected_output, output, order_tolerance(c.dtype));
  if (difference) return "output " + *difference;
  difference = exact ? first_bitwise_difference(expected.statistics, actual.statistics)
                     : first_difference_beyond(expected.statistics, actual.statistics, 1e-9);
  if (difference) return "statistics " + *difference;
  return nullopt;
}

void cpu_checks(Report& report, const SelfTestOptions& options) {
  report.line("CPU kernels: every instruction set against the baseline, bit for bit");
  const auto levels = cpu::supported_capabilities();
  const auto active = cpu::active_capability();
  const auto cases = grid();
  std::vector<Outcome> baseline;
  cpu::set_active_capability(cpu::Capability::kBaseline);
  for (const auto& c : cases) baseline.push_back(run_case(c, at::kCPU));
  for (auto level : levels) {
    if (level == cpu::Capability::kBaseline) continue;
    cpu::set_active_capability(level);
    for (size_t i = 0; i < cases.size(); ++i) {
      report.check(cpu::to_string(level) + " " + cases[i].name,
                   difference_of(cases[i], baseline[i], run_case(cases[i], at::kCPU), true,
                                 options.perturb));
    }
  }
  cpu::set_active_capability(active);
  if (levels.size() < 2) report.skip("other instruction sets", "this CPU runs the baseline only");
  // One thread against the process's thread count.
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto& c = cases.front();
  const auto one_thread = run_case(c, at::kCPU);
  at::set_num_threads(threads);
  report.check("1 thread against " + std::to_string(threads) + " " + c.name,
               difference_of(c, run_case(c, at::kCPU), one_thread, true, options.perturb));
}

void gpu_checks(Report& report, const SelfTestOptions& options, int device_index) {
  const auto* checks = registered_checks();
  const at::Device device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index));
  report.line("GPU " + std::to_string(device_index) + ": " + checks->describe(device_index));
  report.line(" CUDA kernels against the CPU kernels (explicit seed and offset)");
  for (const auto& c : grid()) {
    report.check(c.name, difference_of(c, run_case(c, at::kCPU), run_case(c, device), false,
                                       options.perturb));
  }
  for (const auto& shape : checks->shapes_per_path(device_index)) {
    Case c;
    c.sizes = shape.sizes;
    c.num_tasks = shape.num_tasks;
    c.dtype = shape.dtype;
    c.marginalize = shape.marginalize;
    c.statistics = shape.statistics;
    std::ostringstream name;
    name << "path " << shape.path << " " << c.dtype << at::IntArrayRef(c.sizes)
         << " n=" << c.num_tasks << " (" << shape.plan << ")";
    report.check(name.str(), difference_of(c, run_case(c, at::kCPU), run_case(c, device), false,
                                           options.perturb));
  }
  // combine_out into a task gradient (as the C++ layer's backward does on the CPU): every kernel
  // must read an element of each task before it writes that element of the output.
  for (bool marginalize : {true, false}) {
    for (int64_t n : {3, 40}) {
      Case c;
      c.marginalize = marginalize;
      c.num_tasks = n;
      c.statistics = false;
      c.sizes = marginalize ? std::vector<int64_t>{601, 131} : std::vector<int64_t>{3, 1001};
      auto inputs = inputs_of(c, device);
      at::Tensor out = inputs.grads.back();
      combine_out(out, inputs.grads, inputs.activation, inputs.options);
      Outcome into_gradient{out, run_case(c, at::kCPU).statistics};
      std::ostringstream name;
      name << "combine_out into a task gradient, "
           << (marginalize ? "marginalised" : "per element") << " n=" << n;
      report.check(name.str(), difference_of(c, run_case(c, at::kCPU), into_gradient, true,
                                             options.perturb));
    }
  }
  // A side stream: the kernels run on the current stream, whatever it is.
  {
    const auto& c = grid().front();
    const auto expected = run_case(c, device);
    c10::impl::VirtualGuardImpl guard_impl(at::kCUDA);
    const auto stream = guard_impl.getStreamFromGlobalPool(device, false);
    Outcome on_stream;
    {
      const c10::StreamGuard stream_guard(stream);
      on_stream = run_case(c, device);
      guard_impl.synchronizeStream(stream);
    }
    report.check("side stream " + c.name,
                 difference_of(c, expected, on_stream, true, options.perturb));
  }
  const auto graph = checks->graph_replay(device_index);
  report.check("CUDA graph capture and replay",
               graph.empty() ? nullopt : optional<std::string>(graph));
  if (!options.bandwidth) {
    report.skip("bandwidth", "not asked for");
    return;
  }
  for (int64_t n : {2, 8}) {
    const int64_t rows = 4096, columns = 4096;  // N = 16M
    const auto activation = at::randn({rows, columns}, at::TensorOptions(device));
    std::vector<at::Tensor> grads;
    for (int64_t task = 0; task < n; ++task) grads.push_back(at::randn_like(activation));
    const auto options_n = GradDropOptions(n).seed(1);
    auto fused = [&] { combine(grads, activation, options_n); };
    const auto uniform = at::rand({columns}, activation.options());
    auto composed = [&] {
      reference::combine_in(grads, activation, options_n, uniform, at::kFloat);
    };
    // The same footprint: (n + 2) N float32 moved, as one copy of (n + 2) N / 2 elements.
    const auto source = at::empty({(n + 2) * rows * columns / 2}, activation.options());
    auto target = at::empty_like(source);
    auto footprint = [&] { target.copy_(source); };
    fused();
    composed();
    footprint();
    const double fused_ms = checks->time_ms(fused, 10);
    const double composed_ms = checks->time_ms(composed, 3);
    const double copy_ms = checks->time_ms(footprint, 10);
    const double bytes = static_cast<double>((n + 2) * rows * columns * 4);
    std::ostringstream text;
    text << "bandwidth float32 [4096, 4096] n=" << n << ": fused " << fused_ms << " ms ("
         << bytes / fused_ms / 1e6 << " GB/s, " << 100.0 * copy_ms / fused_ms
         << " % of a same-footprint copy's " << bytes / copy_ms / 1e6 << " GB/s), "
         << composed_ms / fused_ms << "x faster than the composed formula";
    report.line("  info  " + text.str());
  }
}

}  // namespace

bool register_cuda_checks(const CudaChecks& checks) {
  registered_checks() = &checks;
  return true;
}

const CudaChecks* cuda_checks() { return registered_checks(); }

}  // namespace selftest

SelfTestResult run_selftest(const SelfTestOptions& options) {
  SelfTestResult result;
  selftest::Report report(result);
  std::ostringstream head;
  head << "graddrop " << GRADDROP_VERSION << " self-test; LibTorch " << TORCH_VERSION
       << "; CUDA kernels " << (selftest::cuda_checks() ? "built" : "not built")
       << "; CPU instruction sets:";
  for (auto level : cpu::supported_capabilities()) head << " " << cpu::to_string(level);
  head << " (active " << cpu::to_string(cpu::active_capability()) << "), "
       << at::get_num_threads() << " threads" << (options.perturb ? "; PERTURBED" : "");
  report.line(head.str());
  selftest::cpu_checks(report, options);
  const int devices = torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count())
                                                  : 0;
  if (devices == 0) {
    report.skip("GPU checks", "no CUDA device is visible");
  } else if (selftest::cuda_checks() == nullptr) {
    report.skip("GPU checks", "this build of graddrop has no CUDA kernels");
  } else {
    for (int device = 0; device < devices; ++device) {
      selftest::gpu_checks(report, options, device);
    }
  }
  std::ostringstream tail;
  tail << (result.passed ? "PASSED" : "FAILED") << ": " << result.checks - result.failures
       << " passed, " << result.failures << " failed, " << result.skipped << " skipped";
  report.line(tail.str());
  result.report = report.text();
  return result;
}

void set_verify(bool enabled) { ops::set_verify(enabled); }
bool verify_enabled() { return ops::verify_enabled(); }

}  // namespace graddrop

namespace {

// For the Python package (python -m graddrop.selftest): (passed, report).
std::tuple<bool, std::string> selftest_operator(bool bandwidth, bool perturb) {
  graddrop::SelfTestOptions options;
  options.bandwidth = bandwidth;
  options.perturb = perturb;
  const auto result = graddrop::run_selftest(options);
  return {result.passed, result.report};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(graddrop, m) {
  m.def("selftest(bool bandwidth=True, bool perturb=False) -> (bool, str)", &selftest_operator);
}
