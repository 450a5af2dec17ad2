#pragma once
// The per-element combine kernel (marginalize_batch off): P, U and the masks per element of A.
//
// The elements are cut into tiles of kThreads * kWidth * tile_steps (tile_steps chosen by the host,
// cuda/launch_plan.cpp, so that small calls still give every resident block a tile); a block
// takes whole tiles
// (a grid-stride loop over tiles). In each step of a tile every thread handles one run of kWidth
// elements (one or two Philox groups): it loads A and every g_i of its run before using any
// (16-byte vectors when every pointer is aligned and the run is whole, element by element
// otherwise), draws U with one Philox call per group keyed on the group's logical index, and
// writes out = sum_i c_i * g_i. With statistics, each tile writes one partial row, reduced in a
// fixed order: the tile, not the grid, fixes every sum.
#include "combine_common.cuh"
#include "launch_plan.h"

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
  int tile_steps;      // steps per tile, 1..cuda_plan::kMaxTileSteps
  double* statistics;  // [tiles][num_tasks + 4] partial rows (kStatistics)
};

// Elements per thread and step: 16 bytes of each input for 16-bit types with few tasks, one
// Philox group (4 elements) otherwise, which keeps the per-task registers of 8 tasks in check.
template <typename scalar_t, class Tasks>
constexpr int per_element_width() {
  return cuda_plan::per_element_width_of(sizeof(scalar_t), Tasks::kChunk);
}

template <typename scalar_t, class Tasks>
constexpr int per_element_alignment() {
  return vector_alignment<scalar_t, per_element_width<scalar_t, Tasks>()>();
}


// Loads this run of every task of one chunk, converted to op-math (zeros for undefined tasks and
// for slots past the task count). All loads are issued before any value is used.
template <typename scalar_t, typename opmath_t, class Tasks, int kWidth>
__device__ __forceinline__ void load_task_chunk(const Tasks& tasks, int chunk_begin, int num_tasks,
                                                int64_t first, int count, bool whole,
                                                opmath_t (&grad)[Tasks::kChunk][kWidth]) {
  scalar_t values[Tasks::kChunk][kWidth];
#pragma unroll
  for (int t = 0; t < Tasks::kChunk; ++t) {
    const int task = chunk_begin + t;
    const scalar_t* source = task < num_tasks ? tasks.entry(task).grad : nullptr;
    if (source != nullptr) {
      load_run(source + first, count, whole, values[t]);
    } else {
#pragma unroll
      for (int j = 0; j < kWidth; ++j) values[t][j] = scalar_t(0);
    }
  }
#pragma unroll
  for (int t = 0; t < Tasks::kChunk; ++t) {
#pragma unroll
    for (int j = 0; j < kWidth; ++j) grad[t][j] = static_cast<opmath_t>(values[t][j]);
  }
}

// kStatistics: write the tiles' partial rows (keep_grad_norm or statistics); a template
// parameter because the float64 sums cost registers the plain kernel does not need.
template <typename scalar_t, typename opmath_t, class Tasks, bool kStatistics>
__global__ void __launch_bounds__(kThreads)
    combine_per_element_kernel(
        const __grid_constant__ PerElementParams<scalar_t, opmath_t, Tasks> p) {
  constexpr int kWidth = per_element_width<scalar_t, Tasks>();
  constexpr int kChunk = Tasks::kChunk;
  extern __shared__ unsigned long long block_kept[];  // [num_tasks] (kStatistics)
  __shared__ double scratch[kWarps];

  const int n = p.num_tasks;
  if constexpr (kStatistics) {
    for (int task = static_cast<int>(threadIdx.x); task < n; task += kThreads) block_kept[task] = 0;
    __syncthreads();
  }
  const PhiloxKey key = philox_key(p.random);
  const int chunks = chunk_count<Tasks>(n);
  const int64_t runs = (p.numel + kWidth - 1) / kWidth;
  const int64_t tile = int64_t(kThreads) * kWidth * p.tile_steps;
  const int64_t tiles = (p.numel + tile - 1) / tile;

  for (int64_t tile_index = blockIdx.x; tile_index < tiles; tile_index += gridDim.x) {
    double purity_total = 0.0, conflicts = 0.0, output_square = 0.0, plain_square = 0.0;
    uint32_t kept[kChunk];
#pragma unroll
    for (int t = 0; t < kChunk; ++t) kept[t] = 0;

    for (int step = 0; step < p.tile_steps; ++step) {
      const int64_t run = (tile_index * p.tile_steps + step) * kThreads + threadIdx.x;
      const int64_t first = run * kWidth;
      const int count =
          run < runs ? static_cast<int>(p.numel - first < kWidth ? p.numel - first : kWidth) : 0;
      const bool whole = p.vectorized && count == kWidth;

      opmath_t signal_of_activation[kWidth];
      opmath_t grad[kChunk][kWidth];
      {
        scalar_t activation[kWidth];
        load_run(p.activation + first, count, whole, activation);
        load_task_chunk<scalar_t>(p.tasks, 0, n, first, count, whole, grad);
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

      // The sums over the defined tasks, in task order, as the CPU kernel forms them.
      opmath_t signed_sum[kWidth], absolute_sum[kWidth], plain_sum[kWidth];
      bool any_positive[kWidth], any_negative[kWidth];
#pragma unroll
      for (int j = 0; j < kWidth; ++j) {
        signed_sum[j] = absolute_sum[j] = plain_sum[j] = opmath_t(0);
        any_positive[j] = any_negative[j] = false;
      }
      for (int chunk = 0; chunk < chunks; ++chunk) {
        if (chunk > 0) load_task_chunk<scalar_t>(p.tasks, chunk * kChunk, n, first, count, whole, grad);
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
        keep[j] = detail::keep_probability(purity[j], p.math.keep_function, p.math.scale);
        if (p.keep_probability != nullptr) {
          keep[j] = detail::checked_keep(purity[j], j < count ? p.keep_probability[first + j]
                                                              : opmath_t(0));
        }
        if (p.random.uniform != nullptr) keep[j] = detail::keep_for_uniform(keep[j], uniform[j]);
      }

      // The coefficients and the output. With more than one chunk of tasks the gradients are
      // loaded again (from L1/L2: this thread read them a moment ago).
      opmath_t combined[kWidth];
#pragma unroll
      for (int j = 0; j < kWidth; ++j) combined[j] = opmath_t(0);
      for (int chunk = 0; chunk < chunks; ++chunk) {
        if (!Tasks::kSingleChunk) {
          load_task_chunk<scalar_t>(p.tasks, chunk * kChunk, n, first, count, whole, grad);
        }
#pragma unroll
        for (int t = 0; t < kChunk; ++t) {
          const int task = chunk * kChunk + t;
          if (task >= n) break;
          const TaskEntry<scalar_t, opmath_t> entry = p.tasks.entry(task);
          if (entry.grad == nullptr) continue;  // adds nothing; its kept count is the host's
#pragma unroll
          for (int j = 0; j < kWidth; ++j) {
            const opmath_t signal = signal_of_activation[j] * grad[t][j];
            combined[j] += detail::task_coefficient(signal, keep[j], uniform[j], entry.leak,
                                                    p.math.zero_sign) *
                           grad[t][j];
            if (kStatistics && j < count) {
              kept[t] += detail::sign_mask(signal, keep[j], uniform[j], p.math.zero_sign) ? 1u : 0u;
            }
          }
        }
        if constexpr (kStatistics && !Tasks::kSingleChunk) {
          // Integer counts: exact in any order.
#pragma unroll
          for (int t = 0; t < kChunk; ++t) {
            const uint32_t total = warp_sum(kept[t]);
            if (threadIdx.x % 32 == 0 && total != 0 && chunk * kChunk + t < n) {
              atomicAdd(&block_kept[chunk * kChunk + t], static_cast<unsigned long long>(total));
            }
            kept[t] = 0;
          }
        }
      }

      scalar_t output[kWidth];
#pragma unroll
      for (int j = 0; j < kWidth; ++j) output[j] = static_cast<scalar_t>(combined[j]);
      store_run(p.output + first, count, whole, output);

      if constexpr (kStatistics) {
#pragma unroll
        for (int j = 0; j < kWidth; ++j) {
          if (j >= count) break;
          purity_total += static_cast<double>(purity[j]);
          conflicts += any_positive[j] && any_negative[j] ? 1.0 : 0.0;
          output_square += static_cast<double>(combined[j]) * static_cast<double>(combined[j]);
          plain_square += static_cast<double>(plain_sum[j]) * static_cast<double>(plain_sum[j]);
        }
      }
    }

    if constexpr (kStatistics) {
      if constexpr (Tasks::kSingleChunk) {
#pragma unroll
        for (int t = 0; t < kChunk; ++t) {
          const uint32_t total = warp_sum(kept[t]);
          if (threadIdx.x % 32 == 0 && total != 0 && t < n) {
            atomicAdd(&block_kept[t], static_cast<unsigned long long>(total));
          }
        }
      }
      double* row = p.statistics + tile_index * ops::accumulator_size(n);
      purity_total = block_sum(purity_total, scratch);  // its barriers also order block_kept
      conflicts = block_sum(conflicts, scratch);
      output_square = block_sum(output_square, scratch);
      plain_square = block_sum(plain_square, scratch);
      if (threadIdx.x == 0) {
        for (int task = 0; task < n; ++task) {
          row[task] = static_cast<double>(block_kept[task]);
          block_kept[task] = 0;
        }
        row[ops::purity_sum_slot(n)] = purity_total;
        row[ops::conflict_slot(n)] = conflicts;
        row[ops::output_square_slot(n)] = output_square;
        row[ops::plain_square_slot(n)] = plain_square;
      }
      __syncthreads();
    }
  }
}

}  // namespace cuda_kernels
}  // namespace graddrop
