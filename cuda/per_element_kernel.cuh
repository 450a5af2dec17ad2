#pragma once
// The per-element combine kernel (marginalize_batch off): P, U and the masks per element of A.
//
// A grid-stride loop over runs of kWidth elements (one or two Philox groups): each thread loads
// A and every g_i for its run (16-byte vectors when every pointer is aligned and the run is
// whole, element by element otherwise), draws U with one Philox call per group keyed on the
// group's logical index, and writes out = sum_i c_i * g_i. The loop is warp-uniform (every lane
// of a warp runs the same number of steps, lanes past the end with an empty run), so warp-wide
// reductions of the statistics may sit inside it.
#include "combine_common.cuh"

namespace graddrop {
namespace cuda_kernels {

template <typename scalar_t, typename opmath_t, class Tasks>
struct PerElementParams {
  const scalar_t* activation;
  scalar_t* output;
  Tasks tasks;
  int num_tasks;
  const opmath_t* keep_probability;  // explicit f(P), or null: computed from P
  RandomSource<opmath_t> random;
  MathSettings<opmath_t> math;
  int64_t numel;
  bool vectorized;     // every tensor aligned to per_element_alignment: whole runs move as vectors
  double* statistics;  // [gridDim.x][num_tasks + 4] block sums (kStatistics)
};

// Elements per thread and step: 16 bytes of each input for 16-bit types with few tasks, one
// Philox group (4 elements) otherwise, which keeps the per-task registers of 8 tasks in check.
template <typename scalar_t, class Tasks>
constexpr int per_element_width() {
  return sizeof(scalar_t) == 2 && Tasks::kChunk <= 4 ? 8 : 4;
}

template <typename scalar_t, class Tasks>
constexpr int per_element_alignment() {
  return vector_alignment<scalar_t, per_element_width<scalar_t, Tasks>()>();
}

// Loads this run of every task of one chunk, converted to op-math (zeros for undefined tasks and
// for slots past the task count).
template <typename scalar_t, typename opmath_t, class Tasks, int kWidth>
__device__ __forceinline__ void load_task_chunk(const Tasks& tasks, int chunk_begin, int num_tasks,
                                                int64_t first, int count, bool whole,
                                                opmath_t (&grad)[Tasks::kChunk][kWidth]) {
#pragma unroll
  for (int t = 0; t < Tasks::kChunk; ++t) {
    const int task = chunk_begin + t;
    const scalar_t* source = task < num_tasks ? tasks.entry(task).grad : nullptr;
    scalar_t values[kWidth];
    if (source != nullptr) {
      load_run(source + first, count, whole, values);
    } else {
#pragma unroll
      for (int j = 0; j < kWidth; ++j) values[j] = scalar_t(0);
    }
#pragma unroll
    for (int j = 0; j < kWidth; ++j) grad[t][j] = static_cast<opmath_t>(values[j]);
  }
}

// kStatistics: record the block statistics (keep_grad_norm or statistics); a template
// parameter because the float64 sums cost registers the plain kernel does not need.
template <typename scalar_t, typename opmath_t, class Tasks, bool kStatistics>
__global__ void __launch_bounds__(kThreads)
    combine_per_element_kernel(const PerElementParams<scalar_t, opmath_t, Tasks> p) {
  constexpr int kWidth = per_element_width<scalar_t, Tasks>();
  constexpr int kChunk = Tasks::kChunk;
  extern __shared__ unsigned long long block_kept[];  // [num_tasks]
  __shared__ double scratch[kWarps];

  const int n = p.num_tasks;
  constexpr bool statistics = kStatistics;
  if constexpr (statistics) {
    clear_block_kept(block_kept, n);
    __syncthreads();
  }
  const PhiloxKey key = philox_key(p.random);
  const int chunks = chunk_count<Tasks>(n);
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t runs = (p.numel + kWidth - 1) / kWidth;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;

  ThreadStatistics totals;
  uint32_t kept[kChunk];
#pragma unroll
  for (int t = 0; t < kChunk; ++t) kept[t] = 0;

  for (int64_t warp_run = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x - lane;
       warp_run < runs; warp_run += stride) {
    const int64_t run = warp_run + lane;
    const int64_t first = run * kWidth;
    const int count =
        run < runs ? static_cast<int>(p.numel - first < kWidth ? p.numel - first : kWidth) : 0;
    const bool whole = p.vectorized && count == kWidth;

    opmath_t signal_of_activation[kWidth];
    {
      scalar_t activation[kWidth];
      load_run(p.activation + first, count, whole, activation);
#pragma unroll
      for (int j = 0; j < kWidth; ++j) {
        signal_of_activation[j] =
            detail::sign_signal(static_cast<opmath_t>(activation[j]), p.math.sign_source);
      }
    }
    opmath_t uniform[kWidth];
#pragma unroll
    for (int g = 0; g < kWidth / kGroup; ++g) {
      uniform_group(p.random, key, first / kGroup + g, count - g * kGroup, uniform + g * kGroup);
    }

    // Pass A: the sums over the defined tasks, in task order, as the CPU kernel forms them.
    opmath_t grad[kChunk][kWidth];
    opmath_t signed_sum[kWidth], absolute_sum[kWidth], plain_sum[kWidth];
    bool any_positive[kWidth], any_negative[kWidth];
#pragma unroll
    for (int j = 0; j < kWidth; ++j) {
      signed_sum[j] = absolute_sum[j] = plain_sum[j] = opmath_t(0);
      any_positive[j] = any_negative[j] = false;
    }
    for (int chunk = 0; chunk < chunks; ++chunk) {
      load_task_chunk<scalar_t>(p.tasks, chunk * kChunk, n, first, count, whole, grad);
#pragma unroll
      for (int t = 0; t < kChunk; ++t) {
        const int task = chunk * kChunk + t;
        if (task >= n) break;
        if (p.tasks.entry(task).grad == nullptr) continue;  // zero: changes no sum
#pragma unroll
        for (int j = 0; j < kWidth; ++j) {
          const opmath_t signal = signal_of_activation[j] * grad[t][j];
          signed_sum[j] += signal;
          absolute_sum[j] += magnitude(signal);
          plain_sum[j] += grad[t][j];
          any_positive[j] |= signal > opmath_t(0);
          any_negative[j] |= signal < opmath_t(0);
        }
      }
    }

    opmath_t purity[kWidth], keep[kWidth];
#pragma unroll
    for (int j = 0; j < kWidth; ++j) {
      purity[j] = detail::purity(signed_sum[j], absolute_sum[j], p.math.epsilon);
      if (p.keep_probability != nullptr) {
        keep[j] = j < count ? p.keep_probability[first + j] : opmath_t(0);
      } else {
        keep[j] = detail::keep_probability(purity[j], p.math.keep_function, p.math.scale);
      }
    }

    // Pass B: the coefficients and the output. With more than one chunk the gradients are
    // loaded again (from L1/L2: this thread read them a moment ago).
    opmath_t combined[kWidth];
#pragma unroll
    for (int j = 0; j < kWidth; ++j) combined[j] = opmath_t(0);
    for (int chunk = 0; chunk < chunks; ++chunk) {
      if constexpr (!Tasks::kSingleChunk) {
        load_task_chunk<scalar_t>(p.tasks, chunk * kChunk, n, first, count, whole, grad);
      }
#pragma unroll
      for (int t = 0; t < kChunk; ++t) {
        const int task = chunk * kChunk + t;
        if (task >= n) break;
        const TaskEntry<scalar_t, opmath_t> entry = p.tasks.entry(task);
        if (entry.grad == nullptr) {
          // An undefined gradient adds nothing; its mask is the zero-sign rule.
          if constexpr (statistics) {
            const bool zero_kept =
                detail::sign_mask(opmath_t(0), opmath_t(0), opmath_t(0), p.math.zero_sign);
            kept[t] += zero_kept ? static_cast<uint32_t>(count) : 0u;
          }
          continue;
        }
#pragma unroll
        for (int j = 0; j < kWidth; ++j) {
          const opmath_t signal = signal_of_activation[j] * grad[t][j];
          const opmath_t coefficient =
              detail::task_coefficient(signal, keep[j], uniform[j], entry.leak, p.math.zero_sign);
          combined[j] += coefficient * grad[t][j];
          if (statistics && j < count) {
            kept[t] += detail::sign_mask(signal, keep[j], uniform[j], p.math.zero_sign) ? 1u : 0u;
          }
        }
      }
      if (!Tasks::kSingleChunk && statistics) flush_kept(kept, chunk * kChunk, n, block_kept);
    }

    scalar_t output[kWidth];
#pragma unroll
    for (int j = 0; j < kWidth; ++j) output[j] = static_cast<scalar_t>(combined[j]);
    store_run(p.output + first, count, whole, output);

    if constexpr (statistics) {
#pragma unroll
      for (int j = 0; j < kWidth; ++j) {
        if (j >= count) break;
        totals.purity_sum += static_cast<double>(purity[j]);
        totals.conflicts += any_positive[j] && any_negative[j] ? 1.0 : 0.0;
        totals.output_square += static_cast<double>(combined[j]) * static_cast<double>(combined[j]);
        totals.plain_square +=
            static_cast<double>(plain_sum[j]) * static_cast<double>(plain_sum[j]);
      }
    }
  }

  if constexpr (statistics) {
    if (Tasks::kSingleChunk) flush_kept(kept, 0, n, block_kept);
    double* row = p.statistics + static_cast<int64_t>(blockIdx.x) * ops::accumulator_size(n);
    write_purity_statistics(totals, block_kept, n, row, scratch);
    write_output_statistics(totals, n, row, scratch);
  }
}

}  // namespace cuda_kernels
}  // namespace graddrop
