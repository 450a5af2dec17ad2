#pragma once
// The marginalised combine kernel (marginalize_batch on): the activation viewed as
// [rows, columns], one purity, draw and mask set per column, shared by every row.
//
// A block works on a strip of W columns (W a power of two, 16..kMaxStripWidth) with 2W threads:
// W/4 column lanes (4 adjacent columns each: one Philox group, one vector) by detail::kRowLanes
// row lanes. The thread of row lane l adds its rows in order, exactly as the canonical batch sum
// of detail/math.h defines (row lanes inside chunks of detail::kRowChunk rows, the lanes
// combined by detail::sum_of_row_lanes, the chunks in order), so P is the CPU's bit for bit.
//
//   pass 1  per chunk of rows, every thread sums s(A) * g_i over its rows for its 4 columns,
//           loading several rows before using any; at the chunk's end the row lanes are combined
//           through shared memory;
//   finalise  per column: P, U (the column's logical index), f(P), the coefficients c_i;
//   pass 2  out[r, d] = sum_i c_i[d] * g_i[r, d] over the rows again, in slices of apply_rows
//           rows (one statistics row per slice and kStatisticsGroup columns).
//
// Pass 1 cannot use more threads than the canonical order has chains (a chunk, a row lane,
// 4 adjacent columns): a batch of one chunk gives 2 threads per column at most. Pass 2 has no
// such bound; the host plans it on its own grid (cuda/launch_plan.cpp).
//
// Three phases, chosen by the host (marginalized_launch.cu):
//   kFused    one block per strip, all rows. When the strip's gradients fit in shared memory
//             they stay there between the passes, so they are read from memory once.
//   kPartial  one block per (strip, part), a part being a run of whole chunks: pass 1 writes each
//             chunk's sums to a workspace; the last block of a strip to finish (an arrival
//             counter) adds the chunks in chunk order and finalises the strip. For batches that
//             are long for their width, where too few strips would fill the GPU.
//   kApply    one block per (strip, part) of its own grid (strip width and slices per part
//             chosen for pass 2): pass 2 from the finalised coefficients, blocks in the reverse
//             order so the rows kPartial read last are still in L2.
// And two for data-parallel calls (src/distributed), whose column sums are summed over the ranks
// between pass 1 and the rest:
//   kColumnSums  as kPartial, but the last block of a strip writes the strip's column sums
//                (to `coefficients`, [num_tasks][columns]) and stops;
//   kGivenSums   one block per strip, all rows: the column sums read from `coefficients`
//                instead of pass 1, then finalise and pass 2 as kFused (without the cache).
// Every sum has an order fixed by the call alone, so results do not depend on the grid.
#include "combine_common.cuh"
#include "launch_plan.h"

namespace graddrop {
namespace cuda_kernels {

using cuda_plan::align_shared;
using cuda_plan::kMaxStripWidth;  // 512 threads per block
using cuda_plan::marginalized_cache_bytes;
using cuda_plan::marginalized_layout;
using cuda_plan::MarginalizedLayout;
using cuda_plan::row_chunks_of;
constexpr int kMaxMarginalizedThreads = 2 * kMaxStripWidth;
static_assert(kStatisticsGroup == cuda_plan::kStripGroupColumns,
              "the narrowest strip holds one statistics group");

enum class MarginalizedPhase : int32_t {
  kFused = 0,
  kPartial = 1,
  kApply = 2,
  kColumnSums = 3,
  kGivenSums = 4,
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
  int strip_width;          // W: columns per strip
  int64_t chunks_per_part;  // pass 1: chunks of rows per block along a strip (all in kFused)
  int64_t apply_rows;       // pass 2: rows per slice, a multiple of detail::kRowLanes
  int64_t slices_per_part;  // kApply: slices per block along a strip
  bool vectorized;          // columns % 4 == 0 and every tensor aligned: 4 columns move as vectors
  bool cache;               // kFused: keep the strip's gradients in shared memory between passes
  MarginalizedPhase phase;
  opmath_t* chunk_sums;     // kPartial: [chunks][num_tasks][columns]
  unsigned int* arrivals;   // kPartial: [strips] blocks done, zeroed before the launch
  opmath_t* coefficients;   // written by kPartial, read by kApply: [num_tasks][columns]
                            // (kColumnSums writes, kGivenSums reads the column sums there)
  // kStatistics: [groups] purity rows (kept, sum of P, conflicts), then [slices][groups] output
  // rows (sum out^2, sum (sum_i g_i)^2), each ops::accumulator_size wide, zeroed.
  double* statistics;
};

__host__ __device__ __forceinline__ int64_t statistics_groups_of(int64_t columns) {
  return (columns + kStatisticsGroup - 1) / kStatisticsGroup;
}

// Rows in flight per thread: every load of that many rows is issued before any is used.
template <class Tasks>
constexpr int rows_in_flight() {
  return Tasks::kChunk <= 2 ? 4 : (Tasks::kChunk <= 4 ? 2 : 1);
}

// The per-thread view of one block: its strip, column lane, row lane and columns.
struct StripThread {
  int width;
  int threads;
  int column_lanes;
  int tid;
  int column_lane;
  int row_lane;
  int64_t strip;
  int64_t strip_first;  // first column of the strip
  int64_t column;       // first of this thread's 4 columns
  int valid;            // how many of them exist
  bool whole;           // all 4, as a vector
};

// Per column of the strip (one thread per column lane, 4 columns each): from the column sums G_i
// in column_values, computes P, U and f(P), and overwrites column_values with c_i. With
// statistics, writes the strip's purity rows (one per kStatisticsGroup columns, lanes added in
// order). Every thread of the block must call it.
template <bool kStatistics, typename scalar_t, typename opmath_t, class Tasks>
__device__ __forceinline__ void finalize_strip(
    const MarginalizedParams<scalar_t, opmath_t, Tasks>& p, const StripThread& at,
    opmath_t* column_values, double* statistics_scratch, unsigned int* kept_scratch) {
  const int width = at.width;
  const int n = p.num_tasks;
  if (at.tid < at.column_lanes) {
    const int lane = at.tid;
    const int64_t column = at.strip_first + 4 * lane;
    int count = 0;
    if (column < p.columns) count = p.columns - column < 4 ? static_cast<int>(p.columns - column) : 4;
    opmath_t* values = column_values + 4 * lane;  // task i's 4 columns at values[i * width + j]
    opmath_t uniform[4] = {opmath_t(0), opmath_t(0), opmath_t(0), opmath_t(0)};
    if (count > 0) uniform_group(p.random, philox_key(p.random), column / kGroup, count, uniform);

    opmath_t signed_sum[4], absolute_sum[4];
    bool any_positive[4], any_negative[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      signed_sum[j] = absolute_sum[j] = opmath_t(0);
      any_positive[j] = any_negative[j] = false;
    }
    for (int task = 0; task < n; ++task) {
      if (p.tasks.entry(task).grad == nullptr) continue;  // zero: changes no sum
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const opmath_t signal = values[task * width + j];
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
      keep[j] = detail::keep_probability(purity[j], p.math.keep_function, p.math.scale);
      if (p.keep_probability != nullptr) {
        keep[j] = detail::checked_keep(purity[j],
                                       j < count ? p.keep_probability[column + j] : opmath_t(0));
      }
      if (p.random.uniform != nullptr) keep[j] = detail::keep_for_uniform(keep[j], uniform[j]);
    }
    double purity_total = 0.0, conflicts = 0.0;
    for (int task = 0; task < n; ++task) {
      const TaskEntry<scalar_t, opmath_t> entry = p.tasks.entry(task);
      unsigned int kept = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const opmath_t signal = values[task * width + j];
        values[task * width + j] =
            detail::task_coefficient(signal, keep[j], uniform[j], entry.leak, p.math.zero_sign);
        kept += j < count && entry.grad != nullptr &&
                detail::sign_mask(signal, keep[j], uniform[j], p.math.zero_sign);
      }
      if (kStatistics) kept_scratch[lane * n + task] = kept;
    }
    if constexpr (kStatistics) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (j >= count) break;
        purity_total += static_cast<double>(purity[j]);
        conflicts += any_positive[j] && any_negative[j] ? 1.0 : 0.0;
      }
      statistics_scratch[3 * lane] = purity_total;
      statistics_scratch[3 * lane + 1] = conflicts;
    }
  }
  __syncthreads();
  if constexpr (kStatistics) {
    // One purity row per group of kStatisticsGroup columns: its column lanes in order.
    constexpr int kLanesPerGroup = kStatisticsGroup / 4;
    const int groups = width / kStatisticsGroup;
    for (int index = at.tid; index < groups; index += at.threads) {
      const int64_t group = at.strip_first / kStatisticsGroup + index;
      if (group * kStatisticsGroup >= p.columns) continue;
      double* row = p.statistics + group * ops::accumulator_size(n);
      double purity_total = 0.0, conflicts = 0.0;
      for (int lane = index * kLanesPerGroup; lane < (index + 1) * kLanesPerGroup; ++lane) {
        purity_total += statistics_scratch[3 * lane];
        conflicts += statistics_scratch[3 * lane + 1];
      }
      for (int task = 0; task < n; ++task) {
        unsigned int kept = 0;
        for (int lane = index * kLanesPerGroup; lane < (index + 1) * kLanesPerGroup; ++lane) {
          kept += kept_scratch[lane * n + task];
        }
        row[task] = static_cast<double>(kept);
      }
      row[ops::purity_sum_slot(n)] = purity_total;
      row[ops::conflict_slot(n)] = conflicts;
    }
    __syncthreads();
  }
}

// With statistics, at the end of a slice of rows in pass 2: one output row per group of
// kStatisticsGroup columns, its threads' sums added row lane by row lane, column lane by column
// lane. Every thread of the block must call it.
template <typename scalar_t, typename opmath_t, class Tasks>
__device__ __forceinline__ void write_output_rows(
    const MarginalizedParams<scalar_t, opmath_t, Tasks>& p, const StripThread& at, int64_t slice,
    double output_square, double plain_square, double* statistics_scratch) {
  const int n = p.num_tasks;
  statistics_scratch[3 * at.tid] = output_square;
  statistics_scratch[3 * at.tid + 1] = plain_square;
  __syncthreads();
  constexpr int kLanesPerGroup = kStatisticsGroup / 4;
  const int groups = at.width / kStatisticsGroup;
  const int64_t all_groups = statistics_groups_of(p.columns);
  for (int index = at.tid; index < groups; index += at.threads) {
    const int64_t group = at.strip_first / kStatisticsGroup + index;
    if (group >= all_groups) continue;
    double out_total = 0.0, plain_total = 0.0;
    for (int row_lane = 0; row_lane < detail::kRowLanes; ++row_lane) {
      for (int lane = index * kLanesPerGroup; lane < (index + 1) * kLanesPerGroup; ++lane) {
        const int thread = row_lane * at.column_lanes + lane;
        out_total += statistics_scratch[3 * thread];
        plain_total += statistics_scratch[3 * thread + 1];
      }
    }
    double* row = p.statistics + (all_groups + slice * all_groups + group) * ops::accumulator_size(n);
    row[ops::output_square_slot(n)] = out_total;
    row[ops::plain_square_slot(n)] = plain_total;
  }
  __syncthreads();
}

// kStatistics: write the statistics rows (keep_grad_norm or statistics). The parameters are
// __grid_constant__: the helpers index the task list at run time, which would otherwise copy the
// whole parameter block to local memory in every thread.
template <typename scalar_t, typename opmath_t, class Tasks, bool kStatistics>
__global__ void __launch_bounds__(kMaxMarginalizedThreads)
    combine_marginalized_kernel(
        const __grid_constant__ MarginalizedParams<scalar_t, opmath_t, Tasks> p) {
  constexpr int kChunk = Tasks::kChunk;
  constexpr int kInFlight = rows_in_flight<Tasks>();
  constexpr int kLanes = detail::kRowLanes;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  __shared__ unsigned int arrival;

  const int n = p.num_tasks;
  StripThread at;
  at.width = p.strip_width;
  at.threads = 2 * at.width;
  at.column_lanes = at.width / 4;
  at.tid = static_cast<int>(threadIdx.x);
  at.column_lane = at.tid % at.column_lanes;
  at.row_lane = at.tid / at.column_lanes;
  int64_t part = blockIdx.y;
  at.strip = blockIdx.x;
  if (p.phase == MarginalizedPhase::kApply) {
    at.strip = gridDim.x - 1 - blockIdx.x;
    part = gridDim.y - 1 - blockIdx.y;
  }
  at.strip_first = at.strip * at.width;
  at.column = at.strip_first + 4 * at.column_lane;
  at.valid = 0;
  if (at.column < p.columns) {
    at.valid = p.columns - at.column < 4 ? static_cast<int>(p.columns - at.column) : 4;
  }
  at.whole = p.vectorized && at.valid == 4;

  const int width = at.width;
  // kApply forms no chunk sums: no row-lane scratch, so more of its blocks fit.
  const MarginalizedLayout layout = marginalized_layout(
      n, p.phase == MarginalizedPhase::kApply ? 0 : kChunk, width, sizeof(opmath_t), kStatistics,
      0);
  opmath_t* column_values = reinterpret_cast<opmath_t*>(shared_bytes + layout.column_values);
  opmath_t* lane_scratch = reinterpret_cast<opmath_t*>(shared_bytes + layout.lane_scratch);
  double* statistics_scratch = reinterpret_cast<double*>(shared_bytes + layout.statistics);
  unsigned int* kept_scratch = reinterpret_cast<unsigned int*>(shared_bytes + layout.kept);
  scalar_t* cache = reinterpret_cast<scalar_t*>(shared_bytes + layout.cache);

  const int64_t chunks = row_chunks_of(p.rows);
  const int64_t chunk_begin = part * p.chunks_per_part;
  const int64_t chunk_end =
      chunks - chunk_begin < p.chunks_per_part ? chunks : chunk_begin + p.chunks_per_part;
  const int task_chunks = chunk_count<Tasks>(n);
  auto cache_slot = [&](int64_t iteration, int task) {
    return cache + ((iteration * n + task) * at.threads + at.tid) * 4;
  };

  if (p.phase == MarginalizedPhase::kGivenSums) {
    for (int index = at.tid; index < n * width; index += at.threads) {
      const int64_t target = at.strip_first + index % width;
      column_values[index] =
          target < p.columns ? p.coefficients[(index / width) * p.columns + target] : opmath_t(0);
    }
    __syncthreads();
    finalize_strip<kStatistics>(p, at, column_values, statistics_scratch, kept_scratch);
  } else if (p.phase != MarginalizedPhase::kApply) {
    for (int index = at.tid; index < n * width; index += at.threads) column_values[index] = 0;
    __syncthreads();

    // Pass 1: the canonical column sums of s(A) * g_i, kChunk tasks at a time.
    for (int task_chunk = 0; task_chunk < task_chunks; ++task_chunk) {
      const int first_task = task_chunk * kChunk;
      int64_t iteration = 0;  // this thread's row count so far (the cache index)
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        const int64_t chunk_last =
            p.rows - chunk * detail::kRowChunk < detail::kRowChunk
                ? p.rows
                : (chunk + 1) * detail::kRowChunk;
        opmath_t sums[kChunk][4];
#pragma unroll
        for (int t = 0; t < kChunk; ++t) {
#pragma unroll
          for (int j = 0; j < 4; ++j) sums[t][j] = opmath_t(0);
        }
        if (at.valid > 0) {
          for (int64_t row = chunk * detail::kRowChunk + at.row_lane; row < chunk_last;
               row += kLanes * kInFlight) {
            scalar_t activation[kInFlight][4];
            scalar_t grad[kInFlight][kChunk][4];
#pragma unroll
            for (int q = 0; q < kInFlight; ++q) {
              const int64_t r = row + q * kLanes;
              const int count = r < chunk_last ? at.valid : 0;
              const int64_t offset = r * p.columns + at.column;
              load_run(p.activation + offset, count, at.whole && count > 0, activation[q]);
#pragma unroll
              for (int t = 0; t < kChunk; ++t) {
                const int task = first_task + t;
                const scalar_t* source = task < n ? p.tasks.entry(task).grad : nullptr;
                if (source != nullptr) {
                  load_run(source + offset, count, at.whole && count > 0, grad[q][t]);
                } else {
#pragma unroll
                  for (int j = 0; j < 4; ++j) grad[q][t][j] = scalar_t(0);
                }
              }
            }
#pragma unroll
            for (int q = 0; q < kInFlight; ++q) {
              if (row + q * kLanes >= chunk_last) break;
#pragma unroll
              for (int t = 0; t < kChunk; ++t) {
                const int task = first_task + t;
                if (task >= n) break;
                if (p.cache) store_vector(cache_slot(iteration + q, task), grad[q][t]);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                  const opmath_t signal = detail::sign_signal(
                      static_cast<opmath_t>(activation[q][j]), p.math.sign_source);
                  sums[t][j] += signal * static_cast<opmath_t>(grad[q][t][j]);
                }
              }
            }
            const int64_t left = (chunk_last - row + kLanes - 1) / kLanes;
            iteration += left < kInFlight ? left : kInFlight;
          }
        }
        // The chunk's row lanes, combined by the fixed tree.
#pragma unroll
        for (int t = 0; t < kChunk; ++t) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            lane_scratch[(at.row_lane * kChunk + t) * width + 4 * at.column_lane + j] = sums[t][j];
          }
        }
        __syncthreads();
        for (int index = at.tid; index < kChunk * width; index += at.threads) {
          const int t = index / width;
          const int c = index % width;
          if (first_task + t >= n) continue;
          const opmath_t chunk_sum = detail::sum_of_row_lanes(lane_scratch + t * width + c,
                                                              int64_t(kChunk) * width);
          if (p.phase == MarginalizedPhase::kFused) {
            column_values[(first_task + t) * width + c] += chunk_sum;
          } else if (at.strip_first + c < p.columns) {
            p.chunk_sums[(chunk * n + first_task + t) * p.columns + at.strip_first + c] = chunk_sum;
          }
        }
        __syncthreads();
      }
    }

    if (p.phase == MarginalizedPhase::kPartial || p.phase == MarginalizedPhase::kColumnSums) {
      // The last block of the strip to arrive adds every chunk, in order (fence before arrival).
      __threadfence();
      __syncthreads();
      if (at.tid == 0) arrival = atomicAdd(&p.arrivals[at.strip], 1u);
      __syncthreads();
      if (static_cast<int64_t>(arrival) != static_cast<int64_t>(gridDim.y) - 1) return;
      __threadfence();
      for (int index = at.tid; index < n * width; index += at.threads) {
        const int64_t target = at.strip_first + index % width;
        opmath_t total = opmath_t(0);
        if (target < p.columns) {
          for (int64_t chunk = 0; chunk < chunks; ++chunk) {
            total += __ldcg(&p.chunk_sums[(chunk * n + index / width) * p.columns + target]);
          }
        }
        column_values[index] = total;
      }
      __syncthreads();
    }
    if (p.phase == MarginalizedPhase::kColumnSums) {
      for (int index = at.tid; index < n * width; index += at.threads) {
        const int64_t target = at.strip_first + index % width;
        if (target < p.columns) {
          p.coefficients[(index / width) * p.columns + target] = column_values[index];
        }
      }
      return;
    }

    finalize_strip<kStatistics>(p, at, column_values, statistics_scratch, kept_scratch);
    if (p.phase == MarginalizedPhase::kPartial) {
      for (int index = at.tid; index < n * width; index += at.threads) {
        const int64_t target = at.strip_first + index % width;
        if (target < p.columns) {
          p.coefficients[(index / width) * p.columns + target] = column_values[index];
        }
      }
      return;
    }
  } else {
    for (int index = at.tid; index < n * width; index += at.threads) {
      const int64_t target = at.strip_first + index % width;
      column_values[index] =
          target < p.columns ? p.coefficients[(index / width) * p.columns + target] : opmath_t(0);
    }
    __syncthreads();
  }

  // Pass 2: out = sum_i c_i * g_i, in task order.
  const opmath_t* own_coefficients = column_values + 4 * at.column_lane;
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
  // The rows in slices of p.apply_rows (kFused and kGivenSums: all of them, kApply: its part's);
  // a thread's rows come in the order pass 1 cached them, as slices are whole row-lane rounds.
  const int64_t slices = (p.rows + p.apply_rows - 1) / p.apply_rows;
  int64_t slice_begin = 0, slice_end = slices;
  if (p.phase == MarginalizedPhase::kApply) {
    slice_begin = part * p.slices_per_part;
    slice_end = slices - slice_begin < p.slices_per_part ? slices : slice_begin + p.slices_per_part;
  }
  int64_t iteration = 0;
  for (int64_t slice = slice_begin; slice < slice_end; ++slice) {
    const int64_t slice_last =
        p.rows - slice * p.apply_rows < p.apply_rows ? p.rows : (slice + 1) * p.apply_rows;
    double output_square = 0.0, plain_square = 0.0;
    if (at.valid > 0) {
      for (int64_t row = slice * p.apply_rows + at.row_lane; row < slice_last; row += kLanes) {
        const int64_t offset = row * p.columns + at.column;
        opmath_t combined[4], plain_sum[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) combined[j] = plain_sum[j] = opmath_t(0);
        for (int task_chunk = 0; task_chunk < task_chunks; ++task_chunk) {
          // Every load of the chunk's tasks first, then the arithmetic.
          scalar_t grad[kChunk][4];
#pragma unroll
          for (int t = 0; t < kChunk; ++t) {
            const int task = task_chunk * kChunk + t;
            const scalar_t* source = task < n ? p.tasks.entry(task).grad : nullptr;
            if (source == nullptr) {
#pragma unroll
              for (int j = 0; j < 4; ++j) grad[t][j] = scalar_t(0);
            } else if (p.cache) {
              load_vector(cache_slot(iteration, task), grad[t]);
            } else {
              load_run(source + offset, at.valid, at.whole, grad[t]);
            }
          }
#pragma unroll
          for (int t = 0; t < kChunk; ++t) {
            const int task = task_chunk * kChunk + t;
            if (task >= n) break;
            if (p.tasks.entry(task).grad == nullptr) continue;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              const opmath_t c =
                  Tasks::kSingleChunk ? coefficient[t][j] : own_coefficients[task * width + j];
              const opmath_t g = static_cast<opmath_t>(grad[t][j]);
              combined[j] += c * g;
              plain_sum[j] += g;
            }
          }
        }
        scalar_t output[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) output[j] = static_cast<scalar_t>(combined[j]);
        store_run(p.output + offset, at.valid, at.whole, output);
        ++iteration;
        if constexpr (kStatistics) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            if (j >= at.valid) break;
            output_square += static_cast<double>(combined[j]) * static_cast<double>(combined[j]);
            plain_square += static_cast<double>(plain_sum[j]) * static_cast<double>(plain_sum[j]);
          }
        }
      }
    }
    if constexpr (kStatistics) {
      write_output_rows(p, at, slice, output_square, plain_square, statistics_scratch);
    }
  }
}

}  // namespace cuda_kernels
}  // namespace graddrop
