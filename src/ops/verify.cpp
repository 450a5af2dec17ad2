#include "ops/verify.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include <ATen/ATen.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include "graddrop/options.h"
#include "selftest/compare.h"

namespace graddrop {
namespace ops {
namespace {

std::atomic<int>& verify_flag() {
  static std::atomic<int> flag{[] {
    const char* value = std::getenv("GRADDROP_VERIFY");
    return value != nullptr && std::strcmp(value, "") != 0 && std::strcmp(value, "0") != 0 ? 1
                                                                                             : 0;
  }()};
  return flag;
}

std::string configuration_of(const CombineArguments& arguments) {
  std::ostringstream text;
  text << arguments.activation.device() << " " << arguments.activation.scalar_type()
       << arguments.activation.sizes() << ", " << arguments.num_tasks() << " tasks (defined:";
  for (const auto& grad : arguments.grads) text << (grad.defined() ? " 1" : " 0");
  text << "), " << (arguments.marginalize_batch ? "marginalised" : "per element")
       << ", sign_source " << to_string(arguments.sign_source) << ", keep_function "
       << to_string(arguments.keep_function) << ", scale " << arguments.scale << ", zero_sign "
       << to_string(arguments.zero_sign) << ", epsilon " << arguments.epsilon
       << ", keep_grad_norm " << arguments.keep_grad_norm << ", statistics "
       << arguments.statistics << ", leak " << at::ArrayRef<double>(arguments.leak)
       << ", explicit U " << arguments.uniform.defined() << ", explicit f(P) "
       << arguments.keep_probability.defined();
  return text.str();
}

at::Tensor on_cpu(const at::Tensor& tensor) {
  return tensor.defined() ? tensor.cpu().contiguous() : tensor;
}

// The inputs of a mismatching call, loadable with torch.load: (description, activation, grads,
// uniform, keep_probability, seed, offset).
std::string save_inputs(const CombineArguments& keyed, const std::string& description) {
  c10::List<optional<at::Tensor>> grads;
  for (const auto& grad : keyed.grads) {
    grads.push_back(grad.defined() ? optional<at::Tensor>(on_cpu(grad)) : nullopt);
  }
  auto optional_tensor = [](const at::Tensor& tensor) {
    return tensor.defined() ? c10::IValue(on_cpu(tensor)) : c10::IValue();
  };
  const auto values = c10::ivalue::Tuple::create(
      {c10::IValue(description), c10::IValue(on_cpu(keyed.activation)), c10::IValue(grads),
       optional_tensor(keyed.uniform), optional_tensor(keyed.keep_probability),
       c10::IValue(static_cast<int64_t>(keyed.seed.value_or(0))),
       c10::IValue(static_cast<int64_t>(keyed.offset))});
  const auto bytes = torch::jit::pickle_save(c10::IValue(values));
  static std::atomic<int> counter{0};
  const char* directory = std::getenv("TMPDIR");
  std::ostringstream path;
  path << (directory != nullptr ? directory : "/tmp") << "/graddrop-verify-"
       << static_cast<long>(getpid()) << "-" << counter++ << ".pt";
  std::ofstream file(path.str(), std::ios::binary);
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return file ? path.str() : std::string("(could not write ") + path.str() + ")";
}

}  // namespace

bool verify_enabled() { return verify_flag().load(std::memory_order_relaxed) != 0; }

void set_verify(bool enabled) { verify_flag().store(enabled ? 1 : 0); }

bool first_call_of(const CombineArguments& arguments) {
  static std::mutex mutex;
  static std::set<std::string> seen;
  const std::lock_guard<std::mutex> lock(mutex);
  return seen.insert(configuration_of(arguments)).second;
}

void compare_with_cpu(const CombineArguments& keyed, const at::Tensor& output,
                      const at::Tensor& statistics) {
  CombineArguments cpu = keyed;
  cpu.activation = on_cpu(keyed.activation);
  for (auto& grad : cpu.grads) grad = on_cpu(grad);
  cpu.uniform = on_cpu(keyed.uniform);
  cpu.keep_probability = on_cpu(keyed.keep_probability);
  const auto cpu_output = at::empty_like(cpu.activation);
  const auto accumulators = zero_accumulators(cpu);
  combine_kernels_for(c10::DeviceType::CPU).combine(cpu, nullopt, cpu_output, accumulators);
  const auto cpu_statistics = finish_combine(cpu_output, accumulators, cpu);

  optional<std::string> difference;
  const char* what = "output";
  if (keyed.keep_grad_norm) {
    difference = selftest::first_difference_beyond(
        cpu_output, output, selftest::order_tolerance(output.scalar_type()));
  } else {
    difference = selftest::first_bitwise_difference(cpu_output, output);
  }
  if (!difference && statistics.numel() > 0) {
    what = "statistics";
    // Counts are exact; the mean purity is a float64 sum in each device's own order.
    difference = selftest::first_difference_beyond(cpu_statistics, statistics, 1e-9);
  }
  if (!difference) return;
  const auto description = configuration_of(keyed);
  TORCH_CHECK(false, "graddrop verify: the ", keyed.activation.device().type(),
              " kernel and the CPU kernel disagree on the ", what, " of a call on ", description,
              " (Philox seed ", keyed.seed.value_or(0), ", offset ", keyed.offset, "): ",
              *difference, ". The inputs are saved in ", save_inputs(keyed, description),
              " (torch.load gives (description, activation, grads, uniform, keep_probability, "
              "seed, offset)); please report it with the output of python -m graddrop.selftest.");
}

at::Tensor verified_combine(const CombineArguments& arguments,
                            const optional<at::Generator>& generator,
                            const CombineKernels& kernels, const at::Tensor& output) {
  // The key as host values (the generator advances as in a plain call), given back as an
  // explicit key: the device kernels draw the same U from it, and so do the CPU kernels.
  const PhiloxKey key = kernels.draw_key(arguments, generator);
  CombineArguments keyed = arguments;
  if (!keyed.uniform.defined()) {
    keyed.seed = key.seed;
    keyed.offset = key.offset;
  }
  const auto accumulators = zero_accumulators(keyed);
  kernels.combine(keyed, nullopt, output, accumulators);
  const auto statistics = finish_combine(output, accumulators, keyed);
  compare_with_cpu(keyed, output, statistics);
  return statistics;
}

}  // namespace ops
}  // namespace graddrop
