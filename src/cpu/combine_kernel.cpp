// The CPU kernels behind graddrop::combine (registered as ops::CombineKernels, combine_op.h):
// the Philox key, the split of the work into fixed tiles (per-element mode) or column strips
// (marginalised mode) across threads, and the reduction of the statistics. The vectorised kernels themselves live in
// combine_kernel_impl.h, compiled once per instruction set and picked at run time
// (cpu_capability.h).
//
// Thread-count independence: a tile (kElementTile elements) or a column group (kColumnGroup
// columns) is the unit of every floating-point sum, and the partials are reduced in tile or
// group order; threads only decide who computes which unit. Output, statistics and
// keep_grad_norm's norms are therefore bit-identical whatever the thread count, and the strip
// width (which depends on the cache size and thread count) only changes the speed.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include "cpu/combine_kernel_params.h"
#include "cpu/cpu_capability.h"
#include "ops/combine_op.h"

namespace graddrop {
namespace {

using ops::CombineArguments;

// Below this many elements one thread does everything: a parallel region costs more.
constexpr int64_t kSerialElements = 32768;
// The narrowest strip kept in cache (64 float32 columns: 256-byte row segments).
constexpr int64_t kMinCachedStripWidth = 64;
// Strip width when even kMinCachedStripWidth columns of all rows do not fit the cache budget:
// the two passes then read the gradients from memory twice, in long row segments.
constexpr int64_t kUncachedStripWidth = 256;

// The (seed, offset) of this call: explicit, or a fresh seed from the CPU generator.
ops::PhiloxKey draw_key(const CombineArguments& arguments,
                        const optional<at::Generator>& generator) {
  if (arguments.seed.has_value()) return {*arguments.seed, arguments.offset};
  auto* cpu_generator = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(cpu_generator->mutex_);
  return {cpu_generator->random64(), 0};
}

const cpu::KernelTable& kernels_of(cpu::Capability capability) {
  switch (capability) {
#if defined(GRADDROP_CPU_HAS_AVX512)
    case cpu::Capability::kAvx512:
      return cpu::kAvx512Kernels;
#endif
#if defined(GRADDROP_CPU_HAS_AVX2)
    case cpu::Capability::kAvx2:
      return cpu::kAvx2Kernels;
#endif
    default:
      return cpu::kBaselineKernels;
  }
}

const cpu::KernelTable& active_kernels() { return kernels_of(cpu::active_capability()); }

cpu::KernelDType kernel_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble:
      return cpu::KernelDType::kDouble;
    case at::kHalf:
      return cpu::KernelDType::kHalf;
    case at::kBFloat16:
      return cpu::KernelDType::kBFloat16;
    default:
      return cpu::KernelDType::kFloat;
  }
}

// Bytes of one thread's share of the L2 cache that a strip may fill: half of the L2 (the
// prefetchers and the output need the rest), between 256 KiB and 1 MiB.
int64_t strip_cache_budget() {
  static const int64_t budget = [] {
    int64_t level2 = 0;
#if defined(_SC_LEVEL2_CACHE_SIZE)
    level2 = static_cast<int64_t>(sysconf(_SC_LEVEL2_CACHE_SIZE));
#endif
    if (level2 <= 0) return int64_t(512) << 10;
    return std::min<int64_t>(std::max<int64_t>(level2 / 2, int64_t(256) << 10), int64_t(1) << 20);
  }();
  return budget;
}

// The last-level cache, shared by the threads: an output larger than it cannot stay cached, so
// the kernels stream it (cpu::Streaming::kAuto).
int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int64_t level3 = 0;
#if defined(_SC_LEVEL3_CACHE_SIZE)
    level3 = static_cast<int64_t>(sysconf(_SC_LEVEL3_CACHE_SIZE));
#endif
    return level3 > 0 ? level3 : int64_t(32) << 20;
  }();
  return bytes;
}

// One thread's share of the last-level cache for marginalised strips: half of the cache split
// among the threads (the rest holds what the prefetchers bring and the outputs), counting at
// most 32 MiB (virtual machines may report far more than the guest gets).
int64_t last_level_cache_share(int64_t threads) {
  const int64_t level3 = std::min<int64_t>(last_level_cache_bytes(), int64_t(32) << 20);
  return level3 / (2 * std::max<int64_t>(threads, 1));
}

int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Scratch for one parallel chunk, 64-byte aligned.
class AlignedScratch {
 public:
  explicit AlignedScratch(int64_t bytes)
      : storage_(static_cast<size_t>((bytes + 127) / sizeof(double))) {}
  void* data() {
    const auto address = reinterpret_cast<uintptr_t>(storage_.data());
    return reinterpret_cast<void*>((address + 63) / 64 * 64);
  }

 private:
  std::vector<double> storage_;
};

// Runs body(begin, end) over [0, units) on the ATen thread pool, or inline when small.
template <typename Body>
void for_each_unit(int64_t units, int64_t elements, const Body& body) {
  if (units <= 1 || elements < kSerialElements) {
    body(0, units);
  } else {
    at::parallel_for(0, units, 1, body);
  }
}

// Per-element mode: tiles of kElementTile elements.
void run_per_element(const cpu::KernelTable& kernels, const cpu::KernelParams& params,
                     double* totals) {
  const int64_t stride = cpu::partial_stride(params.num_tasks);
  const int64_t tiles = (params.columns + cpu::kElementTile - 1) / cpu::kElementTile;
  std::vector<double> partials(params.accumulate ? static_cast<size_t>(tiles * stride) : 0, 0.0);
  const int64_t scratch_bytes = kernels.element_scratch_bytes(params);
  for_each_unit(tiles, params.columns, [&](int64_t begin, int64_t end) {
    AlignedScratch scratch(scratch_bytes);
    kernels.combine_element_tiles(params, begin, end, partials.data(), scratch.data());
  });
  for (int64_t tile = 0; params.accumulate && tile < tiles; ++tile) {
    for (int64_t s = 0; s < stride; ++s) {
      totals[s] += partials[static_cast<size_t>(tile * stride + s)];
    }
  }
}

// Marginalised mode: column strips sized so that pass 2 finds the strip's gradients in cache.
// A strip of rows x width holds (n + 1) inputs; a narrow strip reads each row as a short
// segment, which costs a TLB entry and a prefetch stream per 64 bytes, so strips are at least
// kMinCachedStripWidth wide: within the L2 budget when that allows it, else within this thread's
// share of the last-level cache (many tasks or rows), else kUncachedStripWidth (pass 2 then
// reads the gradients from memory again). Never wider than kMaxStripWidth, and narrow enough
// to give every thread a strip.
int64_t strip_width_for(const cpu::KernelParams& params, int64_t element_size) {
  const int64_t opmath_size = element_size == 8 ? 8 : 4;
  // Per column: the strip's inputs, plus the row lanes of a task group; at least 1 (a call may
  // have no rows, or no defined task gradient).
  const int64_t bytes_per_column = std::max<int64_t>(
      params.rows * (params.num_tasks + 1) * element_size +
          detail::kRowLanes * std::min<int64_t>(params.num_tasks, cpu::kTaskGroup) * opmath_size,
      1);
  const int64_t threads = at::get_num_threads();
  auto columns_within = [&](int64_t budget) {
    return budget / bytes_per_column / cpu::kColumnGroup * cpu::kColumnGroup;
  };
  int64_t width = columns_within(strip_cache_budget());
  if (width < kMinCachedStripWidth) {
    width = columns_within(std::max(strip_cache_budget(), last_level_cache_share(threads)));
  }
  if (width < kMinCachedStripWidth) width = kUncachedStripWidth;
  width = std::min(width, cpu::kMaxStripWidth);
  width = std::min(width, round_up(params.columns, cpu::kColumnGroup));
  if (params.rows * params.columns >= kSerialElements &&
      (params.columns + width - 1) / width < threads) {
    width = std::max(cpu::kColumnGroup,
                     round_up((params.columns + threads - 1) / threads, cpu::kColumnGroup));
  }
  return width;
}

void run_marginalized(const cpu::KernelTable& kernels, const cpu::KernelParams& params,
                      int64_t element_size, double* totals) {
  const int64_t stride = cpu::partial_stride(params.num_tasks);
  const int64_t width = strip_width_for(params, element_size);
  const int64_t strips = (params.columns + width - 1) / width;
  const int64_t groups = (params.columns + cpu::kColumnGroup - 1) / cpu::kColumnGroup;
  std::vector<double> partials(params.accumulate ? static_cast<size_t>(groups * stride) : 0, 0.0);
  const int64_t scratch_bytes = kernels.strip_scratch_bytes(params, width);
  for_each_unit(strips, params.rows * params.columns, [&](int64_t begin, int64_t end) {
    AlignedScratch scratch(scratch_bytes);
    kernels.combine_column_strips(params, width, begin, end, partials.data(), scratch.data());
  });
  for (int64_t group = 0; params.accumulate && group < groups; ++group) {
    for (int64_t s = 0; s < stride; ++s) {
      totals[s] += partials[static_cast<size_t>(group * stride + s)];
    }
  }
}

// The kernel parameters of a call, with undefined gradients left out (they are zero: they
// change no sum, so the kernels never see them). `task_index` maps kernel tasks to tasks.
struct KernelCall {
  cpu::KernelParams params;
  std::vector<const void*> task_data;
  std::vector<double> task_leak;
  std::vector<int64_t> task_index;

  // `output` is undefined for the column-sums phase, which writes none.
  KernelCall(const CombineArguments& arguments, const ops::PhiloxKey& key,
             const at::Tensor& output) {
    for (int64_t task = 0; task < arguments.num_tasks(); ++task) {
      const auto& grad = arguments.grads[static_cast<size_t>(task)];
      if (!grad.defined()) continue;
      task_data.push_back(grad.data_ptr());
      task_leak.push_back(arguments.leak[static_cast<size_t>(task)]);
      task_index.push_back(task);
    }
    params.dtype = kernel_dtype(arguments.activation.scalar_type());
    params.activation = arguments.activation.data_ptr();
    params.grads = task_data.data();
    params.leak = task_leak.data();
    params.num_tasks = static_cast<int64_t>(task_data.size());
    params.rows = arguments.rows;
    params.columns = arguments.columns;
    params.sign_source = arguments.sign_source;
    params.keep_function = arguments.keep_function;
    params.zero_sign = arguments.zero_sign;
    params.scale = arguments.scale;
    params.epsilon = arguments.epsilon;
    params.uniform = arguments.uniform.defined() ? arguments.uniform.data_ptr() : nullptr;
    params.keep_probability =
        arguments.keep_probability.defined() ? arguments.keep_probability.data_ptr() : nullptr;
    params.seed = key.seed;
    params.offset = key.offset;
    params.output = output.defined() ? output.data_ptr() : nullptr;
    params.accumulate = arguments.needs_accumulators();
    params.stream_output = output.defined() && streams(output);
  }

  // Whether the kernels stream the output past the cache (cpu::Streaming).
  static bool streams(const at::Tensor& output) {
    switch (cpu::active_streaming()) {
      case cpu::Streaming::kAlways:
        return true;
      case cpu::Streaming::kNever:
        return false;
      default:
        return output.numel() * static_cast<int64_t>(output.element_size()) >=
               last_level_cache_bytes();
    }
  }

  // Runs the kernels; the statistics partials go to `accumulators` in the operator's layout.
  void run(const CombineArguments& arguments, const at::Tensor& accumulators) {
    const auto& kernels = active_kernels();
    std::vector<double> totals(static_cast<size_t>(cpu::partial_stride(params.num_tasks)), 0.0);
    if (arguments.marginalize_batch) {
      run_marginalized(kernels, params, arguments.activation.element_size(), totals.data());
    } else {
      run_per_element(kernels, params, totals.data());
    }
    if (!params.accumulate || params.column_sums_out != nullptr) return;
    double* slots = accumulators.data_ptr<double>();
    const int64_t kept = params.num_tasks;
    for (int64_t j = 0; j < kept; ++j) {
      slots[task_index[static_cast<size_t>(j)]] = totals[static_cast<size_t>(j)];
    }
    for (int64_t s = 0; s < 4; ++s) {
      slots[arguments.num_tasks() + s] = totals[static_cast<size_t>(kept + s)];
    }
  }
};

// The key of a call that draws one: the explicit U needs none (the generator is left alone).
ops::PhiloxKey key_of(const CombineArguments& arguments,
                      const optional<at::Generator>& generator) {
  return arguments.uniform.defined() ? ops::PhiloxKey{0, 0} : draw_key(arguments, generator);
}

void combine_cpu(const CombineArguments& arguments, const optional<at::Generator>& generator,
                 const at::Tensor& output, const at::Tensor& accumulators) {
  // Drawn even for empty tensors, so the generator advances the same way whatever the shape.
  const ops::PhiloxKey key = key_of(arguments, generator);
  if (arguments.columns == 0) return;
  KernelCall(arguments, key, output).run(arguments, accumulators);
}

void column_sums_cpu(const CombineArguments& arguments, const at::Tensor& sums) {
  KernelCall call(arguments, ops::PhiloxKey{}, at::Tensor());
  call.params.column_sums_out = sums.data_ptr();
  call.run(arguments, at::Tensor());
}

void combine_with_sums_cpu(const CombineArguments& arguments, const at::Tensor& sums,
                           ops::PhiloxKey key, const at::Tensor& output,
                           const at::Tensor& accumulators) {
  KernelCall call(arguments, key, output);
  if (sums.defined()) call.params.column_sums_in = sums.data_ptr();
  call.run(arguments, accumulators);
}

const ops::CombineKernels kCpuKernels = {combine_cpu, key_of, column_sums_cpu,
                                         combine_with_sums_cpu};

}  // namespace

void cpu::draw_uniform(Capability capability, uint64_t seed, uint64_t offset, int64_t first,
                       int64_t count, float* uniform) {
  TORCH_CHECK(first % 4 == 0, "graddrop: draw_uniform needs first % 4 == 0, got ", first);
  const auto levels = supported_capabilities();
  TORCH_CHECK(std::find(levels.begin(), levels.end(), capability) != levels.end(),
              "graddrop: this build or CPU cannot run the ", to_string(capability), " kernels");
  kernels_of(capability).draw_uniform(seed, offset, first, count, uniform);
}

}  // namespace graddrop

GRADDROP_REGISTER_COMBINE_KERNELS(CPU, graddrop::kCpuKernels);
