#pragma once
// The marginalised combine kernel (marginalize_batch on): the activation viewed as
// [rows, columns], one purity, draw and mask set per column, shared by every row.
//
// A block works on a strip of W columns (W a power of two, 4..128) and a range of rows. Its 256
// threads form W/4 column lanes (4 adjacent columns each: one Philox group, one vector) by
// 1024/W row lanes, so a warp reads whole 128-byte row segments whatever W is.
//
//   pass 1  every thread sums s(A) * g_i over its rows for its 4 columns, in row order; the row
//           lanes are then reduced in a fixed tree (shuffles within a warp, warps in order);
//   finalise  per column: P, U (the column's logical index), f(P), the coefficients c_i;
//   pass 2  out[r, d] = sum_i c_i[d] * g_i[r, d] over the rows again.
//
// Three phases, chosen by the host (marginalized_launch.cu):
//   kFused    one block per strip, all rows. When the strip's gradients fit in shared memory
//             they stay there between the passes, so they are read from memory once.
//   kPartial  one block per (strip, part of the rows): pass 1 into a workspace; the last block
//             of a strip to finish (an arrival counter) adds the parts in part order and
//             finalises the strip. Used when too few strips fill the GPU or a strip does not
//             fit on chip.
//   kApply    one block per (strip, part): pass 2 from the finalised coefficients, tiles in the
//             reverse of kPartial's order so the tiles it read last are still in L2.
// Every sum has a fixed order, so results do not depend on scheduling.
#include "combine_common.cuh"

namespace graddrop {
namespace cuda_kernels {

enum class MarginalizedPhase : int32_t {
  kFused = 0,
  kPartial = 1,
  kApply = 2,
};

template <typename scalar_t, typename opmath_t, class Tasks>
struct MarginalizedParams {
  const scalar_t* activation;
  scalar_t* output;
  Tasks tasks;
  int num_tasks;
  const opmath_t* keep_probability;  // explicit f(P), or null
  RandomSource<opmath_t> random;
  MathSettings<opmath_t> math;
  int64_t rows;
  int64_t columns;
  int strip_width;        // W: columns per strip, a power of two in [4, 128]
  int64_t rows_per_part;  // rows per block along a strip (all rows in kFused)
  bool vectorized;        // columns % 4 == 0 and every tensor aligned: 4 columns move as vectors
  bool cache;             // kFused: keep the strip's gradients in shared memory between passes
  MarginalizedPhase phase;
  opmath_t* part_sums;        // kPartial: [parts][num_tasks][columns]
  unsigned int* arrivals;     // kPartial: [strips] blocks done, zeroed before the launch
  opmath_t* coefficients;     // written by kPartial, read by kApply: [num_tasks][columns]
  double* purity_statistics;  // [strips][num_tasks + 4] (kept, P, conflicts) (kStatistics)
  double* output_statistics;  // [parts][strips][num_tasks + 4] (out^2, plain^2) (kStatistics)
};

// Row lanes of a strip of `width` columns.
__host__ __device__ __forceinline__ int row_lanes_of(int width) {
  return kThreads * 4 / width;
}

__host__ __device__ __forceinline__ int64_t align_shared(int64_t bytes) {
  return (bytes + 31) / 32 * 32;
}

// Dynamic shared memory of one block, in bytes from the base.
struct MarginalizedLayout {
  int64_t column_values;  // [num_tasks][W] op-math: column sums, then coefficients
  int64_t row_scratch;    // [kWarps][W] op-math: the reduction over row lanes
  int64_t kept;           // [num_tasks] unsigned long long: kept counts of the strip
  int64_t cache;          // [iterations][num_tasks][kThreads][4] scalar_t (kFused with cache)
  int64_t total;
};

__host__ __device__ __forceinline__ MarginalizedLayout marginalized_layout(int num_tasks, int width,
                                                                           int opmath_size,
                                                                           int64_t cache_bytes) {
  MarginalizedLayout layout;
  layout.column_values = 0;
  layout.row_scratch = align_shared(int64_t(num_tasks) * width * opmath_size);
  layout.kept = layout.row_scratch + align_shared(int64_t(kWarps) * width * opmath_size);
  layout.cache = layout.kept + align_shared(int64_t(num_tasks) * 8);
  layout.total = layout.cache + cache_bytes;
  return layout;
}

// Bytes of the gradient cache for `rows` rows of a strip of `width` columns.
__host__ __device__ __forceinline__ int64_t marginalized_cache_bytes(int64_t rows, int width,
                                                                     int num_tasks,
                                                                     int scalar_size) {
  const int64_t row_lanes = row_lanes_of(width);
  const int64_t iterations = (rows + row_lanes - 1) / row_lanes;
  return iterations * num_tasks * kThreads * 4 * scalar_size;
}

// Sums `values` (this thread's 4 columns) over the row lanes of the block into result[0, W).
// Every thread of the block must call it.
template <typename opmath_t>
__device__ __forceinline__ void reduce_over_row_lanes(opmath_t (&values)[4], int width,
                                                      opmath_t* row_scratch, opmath_t* result) {
  const int column_lanes = width / 4;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  // Lanes with the same column lane are column_lanes apart inside a warp.
  for (int offset = column_lanes; offset < 32; offset *= 2) {
#pragma unroll
    for (int j = 0; j < 4; ++j) values[j] += __shfl_down_sync(kFullWarp, values[j], offset);
  }
  if (lane < column_lanes) {
#pragma unroll
    for (int j = 0; j < 4; ++j) row_scratch[warp * width + 4 * lane + j] = values[j];
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < width) {
    opmath_t total = opmath_t(0);
    for (int w = 0; w < kWarps; ++w) total += row_scratch[w * width + threadIdx.x];
    result[threadIdx.x] = total;
  }
  __syncthreads();
}

// Per column of the strip (warp 0, one lane per Philox group of 4 columns): from the column
// sums G_i in column_values, computes P, U, f(P) and overwrites column_values with c_i. Records
// the per-column statistics. Every thread of the block must call it.
template <bool kStatistics, typename scalar_t, typename opmath_t, class Tasks>
__device__ __forceinline__ void finalize_strip(
    const MarginalizedParams<scalar_t, opmath_t, Tasks>& p, PhiloxKey key, int64_t strip_first,
    opmath_t* column_values, unsigned long long* block_kept, ThreadStatistics& totals) {
  constexpr int kChunk = Tasks::kChunk;
  const int width = p.strip_width;
  const int n = p.num_tasks;
  constexpr bool statistics = kStatistics;
  if (threadIdx.x < 32) {
    const int lane = static_cast<int>(threadIdx.x);
    const int64_t column = strip_first + 4 * lane;
    int count = 0;
    if (lane < width / 4 && column < p.columns) {
      count = p.columns - column < 4 ? static_cast<int>(p.columns - column) : 4;
    }
    opmath_t* values = column_values + 4 * lane;  // task i's 4 columns at values[i * width + j]
    opmath_t uniform[4] = {opmath_t(0), opmath_t(0), opmath_t(0), opmath_t(0)};
    if (count > 0) uniform_group(p.random, key, column / kGroup, count, uniform);

    opmath_t signed_sum[4], absolute_sum[4];
    bool any_positive[4], any_negative[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      signed_sum[j] = absolute_sum[j] = opmath_t(0);
      any_positive[j] = any_negative[j] = false;
    }
    for (int task = 0; task < n; ++task) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const opmath_t signal = j < count ? values[task * width + j] : opmath_t(0);
        signed_sum[j] += signal;
        absolute_sum[j] += magnitude(signal);
        any_positive[j] |= signal > opmath_t(0);
        any_negative[j] |= signal < opmath_t(0);
      }
    }
    opmath_t purity[4], keep[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      purity[j] = detail::purity(signed_sum[j], absolute_sum[j], p.math.epsilon);
      if (p.keep_probability != nullptr) {
        keep[j] = j < count ? p.keep_probability[column + j] : opmath_t(0);
      } else {
        keep[j] = detail::keep_probability(purity[j], p.math.keep_function, p.math.scale);
      }
    }

    uint32_t kept[kChunk];
#pragma unroll
    for (int t = 0; t < kChunk; ++t) kept[t] = 0;
    const int chunks = chunk_count<Tasks>(n);
    for (int chunk = 0; chunk < chunks; ++chunk) {
#pragma unroll
      for (int t = 0; t < kChunk; ++t) {
        const int task = chunk * kChunk + t;
        if (task >= n) break;
        const opmath_t leak = p.tasks.entry(task).leak;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (j >= count) break;
          const opmath_t signal = values[task * width + j];
          values[task * width + j] =
              detail::task_coefficient(signal, keep[j], uniform[j], leak, p.math.zero_sign);
          if constexpr (statistics) {
            kept[t] += detail::sign_mask(signal, keep[j], uniform[j], p.math.zero_sign) ? 1u : 0u;
          }
        }
      }
      if constexpr (statistics) flush_kept(kept, chunk * kChunk, n, block_kept);
    }
    if constexpr (statistics) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (j >= count) break;
        totals.purity_sum += static_cast<double>(purity[j]);
        totals.conflicts += any_positive[j] && any_negative[j] ? 1.0 : 0.0;
      }
    }
  }
  __syncthreads();
}

// kStatistics: record the statistics rows (keep_grad_norm or statistics).
template <typename scalar_t, typename opmath_t, class Tasks, bool kStatistics>
__global__ void __launch_bounds__(kThreads)
    combine_marginalized_kernel(const MarginalizedParams<scalar_t, opmath_t, Tasks> p) {
  constexpr int kChunk = Tasks::kChunk;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  __shared__ double scratch[kWarps];
  __shared__ unsigned int arrival;

  const int n = p.num_tasks;
  const int width = p.strip_width;
  const int column_lanes = width / 4;
  const int row_lanes = row_lanes_of(width);
  const int tid = static_cast<int>(threadIdx.x);
  const MarginalizedLayout layout = marginalized_layout(n, width, sizeof(opmath_t), 0);
  opmath_t* column_values = reinterpret_cast<opmath_t*>(shared_bytes + layout.column_values);
  opmath_t* row_scratch = reinterpret_cast<opmath_t*>(shared_bytes + layout.row_scratch);
  unsigned long long* block_kept =
      reinterpret_cast<unsigned long long*>(shared_bytes + layout.kept);
  scalar_t* cache = reinterpret_cast<scalar_t*>(shared_bytes + layout.cache);

  int64_t strip = blockIdx.x;
  int64_t part = blockIdx.y;
  if (p.phase == MarginalizedPhase::kApply) {
    strip = gridDim.x - 1 - blockIdx.x;
    part = gridDim.y - 1 - blockIdx.y;
  }
  const int64_t strip_first = strip * width;
  const int64_t column = strip_first + 4 * (tid % column_lanes);
  const int row_lane = tid / column_lanes;
  int valid = 0;
  if (column < p.columns) valid = p.columns - column < 4 ? static_cast<int>(p.columns - column) : 4;
  const bool whole = p.vectorized && valid == 4;
  const int64_t row_begin = part * p.rows_per_part;
  const int64_t row_end =
      p.rows - row_begin < p.rows_per_part ? p.rows : row_begin + p.rows_per_part;
  constexpr bool statistics = kStatistics;
  const int chunks = chunk_count<Tasks>(n);
  // Cache slot of (iteration, task) for this thread.
  auto cache_slot = [&](int64_t iteration, int task) {
    return cache + ((iteration * n + task) * kThreads + tid) * 4;
  };

  ThreadStatistics totals;
  if (p.phase != MarginalizedPhase::kApply) {
    if constexpr (statistics) clear_block_kept(block_kept, n);  // read after barriers below

    // Pass 1: column sums of s(A) * g_i.
    for (int chunk = 0; chunk < chunks; ++chunk) {
      opmath_t sums[kChunk][4];
#pragma unroll
      for (int t = 0; t < kChunk; ++t) {
#pragma unroll
        for (int j = 0; j < 4; ++j) sums[t][j] = opmath_t(0);
      }
      if (valid > 0) {
        int64_t iteration = 0;
#pragma unroll 2
        for (int64_t row = row_begin + row_lane; row < row_end; row += row_lanes, ++iteration) {
          const int64_t offset = row * p.columns + column;
          opmath_t signal_of_activation[4];
          {
            scalar_t activation[4];
            load_run(p.activation + offset, valid, whole, activation);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              signal_of_activation[j] =
                  detail::sign_signal(static_cast<opmath_t>(activation[j]), p.math.sign_source);
            }
          }
#pragma unroll
          for (int t = 0; t < kChunk; ++t) {
            const int task = chunk * kChunk + t;
            if (task >= n) break;
            const scalar_t* source = p.tasks.entry(task).grad;
            if (source == nullptr) continue;  // an undefined gradient adds nothing
            scalar_t grad[4];
            load_run(source + offset, valid, whole, grad);
            if (p.cache) store_vector(cache_slot(iteration, task), grad);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              sums[t][j] += signal_of_activation[j] * static_cast<opmath_t>(grad[j]);
            }
          }
        }
      }
#pragma unroll
      for (int t = 0; t < kChunk; ++t) {
        const int task = chunk * kChunk + t;
        if (task >= n) break;
        reduce_over_row_lanes(sums[t], width, row_scratch, column_values + task * width);
      }
    }

    if (p.phase == MarginalizedPhase::kPartial) {
      const int64_t parts = gridDim.y;
      for (int index = tid; index < n * width; index += kThreads) {
        const int64_t target = strip_first + index % width;
        if (target < p.columns) {
          p.part_sums[(part * n + index / width) * p.columns + target] = column_values[index];
        }
      }
      // The last block of the strip to arrive sees every part (fence before the arrival).
      __threadfence();
      __syncthreads();
      if (tid == 0) arrival = atomicAdd(&p.arrivals[strip], 1u);
      __syncthreads();
      if (static_cast<int64_t>(arrival) != parts - 1) return;
      __threadfence();
      for (int index = tid; index < n * width; index += kThreads) {
        const int64_t target = strip_first + index % width;
        if (target >= p.columns) continue;
        opmath_t total = opmath_t(0);
        for (int64_t q = 0; q < parts; ++q) {
          total += __ldcg(&p.part_sums[(q * n + index / width) * p.columns + target]);
        }
        column_values[index] = total;
      }
      __syncthreads();
    }

    finalize_strip<kStatistics>(p, philox_key(p.random), strip_first, column_values, block_kept,
                                totals);
    if constexpr (statistics) {
      write_purity_statistics(totals, block_kept, n,
                              p.purity_statistics + strip * ops::accumulator_size(n), scratch);
    }
    if (p.phase == MarginalizedPhase::kPartial) {
      for (int index = tid; index < n * width; index += kThreads) {
        const int64_t target = strip_first + index % width;
        if (target < p.columns) {
          p.coefficients[(index / width) * p.columns + target] = column_values[index];
        }
      }
      return;
    }
  } else {
    for (int index = tid; index < n * width; index += kThreads) {
      const int64_t target = strip_first + index % width;
      column_values[index] =
          target < p.columns ? p.coefficients[(index / width) * p.columns + target] : opmath_t(0);
    }
    __syncthreads();
  }

  // Pass 2: out = sum_i c_i * g_i, in task order.
  if (valid > 0) {
    const opmath_t* own_coefficients = column_values + 4 * (tid % column_lanes);
    opmath_t coefficient[kChunk][4];
    if constexpr (Tasks::kSingleChunk) {
#pragma unroll
      for (int t = 0; t < kChunk; ++t) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          coefficient[t][j] = t < n ? own_coefficients[t * width + j] : opmath_t(0);
        }
      }
    }
    int64_t iteration = 0;
#pragma unroll 2
    for (int64_t row = row_begin + row_lane; row < row_end; row += row_lanes, ++iteration) {
      const int64_t offset = row * p.columns + column;
      opmath_t combined[4], plain_sum[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) combined[j] = plain_sum[j] = opmath_t(0);
      for (int chunk = 0; chunk < chunks; ++chunk) {
#pragma unroll
        for (int t = 0; t < kChunk; ++t) {
          const int task = chunk * kChunk + t;
          if (task >= n) break;
          const scalar_t* source = p.tasks.entry(task).grad;
          if (source == nullptr) continue;
          scalar_t grad[4];
          if (p.cache) {
            load_vector(cache_slot(iteration, task), grad);
          } else {
            load_run(source + offset, valid, whole, grad);
          }
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const opmath_t c =
                Tasks::kSingleChunk ? coefficient[t][j] : own_coefficients[task * width + j];
            const opmath_t g = static_cast<opmath_t>(grad[j]);
            combined[j] += c * g;
            plain_sum[j] += g;
          }
        }
      }
      scalar_t output[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) output[j] = static_cast<scalar_t>(combined[j]);
      store_run(p.output + offset, valid, whole, output);
      if constexpr (statistics) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (j >= valid) break;
          totals.output_square +=
              static_cast<double>(combined[j]) * static_cast<double>(combined[j]);
          totals.plain_square +=
              static_cast<double>(plain_sum[j]) * static_cast<double>(plain_sum[j]);
        }
      }
    }
  }
  if constexpr (statistics) {
    const int64_t row = part * gridDim.x + strip;
    write_output_statistics(totals, n, p.output_statistics + row * ops::accumulator_size(n),
                            scratch);
  }
}

}  // namespace cuda_kernels
}  // namespace graddrop
