#pragma once
// Device building blocks shared by the per-element and the marginalised combine kernels: the
// parameter pieces passed by value, aligned loads, the Philox draw keyed on logical indices,
// task lists, and the per-block statistics. The math itself lives once, in
// src/detail/math.h and philox.h; the kernels only call it.
#include <cstdint>
#include <tuple>

#include <ATen/cuda/PhiloxUtils.cuh>

#include "detail/math.h"
#include "detail/philox.h"
#include "launch_plan.h"
#include "ops/combine_op.h"

namespace graddrop {
namespace cuda_kernels {

constexpr int kThreads = 256;  // threads per block of the per-element and reduction kernels
static_assert(kThreads == cuda_plan::kPerElementThreads, "the plans use the kernels' block size");
constexpr int kWarps = kThreads / 32;
constexpr int kGroup = 4;         // logical indices per Philox call
constexpr int kGenericChunk = 8;  // tasks held in registers at once beyond 8 tasks
constexpr unsigned kFullWarp = 0xffffffffu;

// ---------------------------------------------------------------------------------------------
// Settings and sources of randomness, by value.

template <typename opmath_t>
struct MathSettings {
  SignSource sign_source;
  KeepFunction keep_function;
  ZeroSign zero_sign;
  opmath_t scale;
  opmath_t epsilon;
};

// Where U comes from: an explicit tensor, or Philox keyed by a generator's reservation or by an
// explicit (seed, offset).
template <typename opmath_t>
struct RandomSource {
  const opmath_t* uniform;  // explicit U, one per element of P; null: Philox
  at::PhiloxCudaState philox;
  // The offset is in the CUDA generator's units (4 per Philox counter step, as curand counts):
  // the counter word of this call is offset / 4, a step no other consumer of the generator uses.
  // False for an explicit (seed, offset), used as given so the CPU kernel draws the same U.
  bool generator_offset;
};

struct PhiloxKey {
  uint64_t seed;
  uint64_t offset;
};

// Unpacked inside the kernel, so a captured CUDA graph reads the generator's state at replay.
template <typename opmath_t>
__device__ __forceinline__ PhiloxKey philox_key(const RandomSource<opmath_t>& random) {
  if (random.uniform != nullptr) return {0, 0};
  const auto unpacked = at::cuda::philox::unpack(random.philox);
  const uint64_t offset = std::get<1>(unpacked);
  return {std::get<0>(unpacked), random.generator_offset ? offset / 4 : offset};
}

// U for the logical indices 4 * group .. 4 * group + 3 of P (entries at or past `count` are 0
// when U is explicit). One Philox call per group, as on the CPU.
template <typename opmath_t>
__device__ __forceinline__ void uniform_group(const RandomSource<opmath_t>& random, PhiloxKey key,
                                              int64_t group, int count, opmath_t* uniform) {
  if (random.uniform != nullptr) {
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      uniform[j] = j < count ? random.uniform[kGroup * group + j] : opmath_t(0);
    }
    return;
  }
  const detail::PhiloxWords words =
      detail::philox_group(key.seed, key.offset, static_cast<uint64_t>(group));
#pragma unroll
  for (int j = 0; j < kGroup; ++j) {
    uniform[j] = static_cast<opmath_t>(detail::uniform_from_word(words.w[j]));
  }
}

// ---------------------------------------------------------------------------------------------
// Loads and stores. A run of N elements moves as 16-byte vectors (8-byte ones when the run is
// only 8 bytes long) when the caller checked the alignment; otherwise element by element.

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T values[N];
};

// Elements per vector access of a run of N elements of T.
template <typename T, int N>
constexpr int vector_unit() {
  return sizeof(T) * N >= 16 ? static_cast<int>(16 / sizeof(T)) : N;
}

// The alignment in bytes a pointer needs for a run of N elements of T to move as vectors.
template <typename T, int N>
constexpr int vector_alignment() {
  return static_cast<int>(sizeof(T)) * vector_unit<T, N>();
}

template <typename T, int N>
__device__ __forceinline__ void load_vector(const T* source, T (&values)[N]) {
  constexpr int kUnit = vector_unit<T, N>();
  using Unit = Pack<T, kUnit>;
#pragma unroll
  for (int u = 0; u < N / kUnit; ++u) {
    const Unit unit = reinterpret_cast<const Unit*>(source)[u];
#pragma unroll
    for (int j = 0; j < kUnit; ++j) values[u * kUnit + j] = unit.values[j];
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_vector(T* destination, const T (&values)[N]) {
  constexpr int kUnit = vector_unit<T, N>();
  using Unit = Pack<T, kUnit>;
#pragma unroll
  for (int u = 0; u < N / kUnit; ++u) {
    Unit unit;
#pragma unroll
    for (int j = 0; j < kUnit; ++j) unit.values[j] = values[u * kUnit + j];
    reinterpret_cast<Unit*>(destination)[u] = unit;
  }
}

// values[j] = source[j] for j < count, 0 past it; `whole` (count == N and aligned) uses vectors.
template <typename T, int N>
__device__ __forceinline__ void load_run(const T* source, int count, bool whole, T (&values)[N]) {
  if (whole) {
    load_vector(source, values);
    return;
  }
#pragma unroll
  for (int j = 0; j < N; ++j) values[j] = j < count ? source[j] : T(0);
}

template <typename T, int N>
__device__ __forceinline__ void store_run(T* destination, int count, bool whole,
                                          const T (&values)[N]) {
  if (whole) {
    store_vector(destination, values);
    return;
  }
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (j < count) destination[j] = values[j];
  }
}

// |x| as std::abs computes it on the CPU (sign bit cleared: -0 -> +0).
__device__ __forceinline__ float magnitude(float value) {
  return fabsf(value);
}
__device__ __forceinline__ double magnitude(double value) {
  return fabs(value);
}

// ---------------------------------------------------------------------------------------------
// Task lists. Up to 8 tasks travel by value in the kernel's parameters (the count a template
// parameter, so the per-task registers are fixed arrays); more tasks come from a table in device
// memory, kGenericChunk at a time.

template <typename scalar_t, typename opmath_t>
struct TaskEntry {
  const scalar_t* grad;  // null: an undefined gradient (zero)
  opmath_t leak;
};

template <typename scalar_t, typename opmath_t, int kCapacity>
struct FixedTasks {
  static constexpr int kChunk = kCapacity;
  static constexpr bool kSingleChunk = true;
  TaskEntry<scalar_t, opmath_t> entries[kCapacity];  // slots past the task count unused

  __device__ __forceinline__ TaskEntry<scalar_t, opmath_t> entry(int task) const {
    return entries[task];
  }
};

template <typename scalar_t, typename opmath_t>
struct TableTasks {
  static constexpr int kChunk = kGenericChunk;
  static constexpr bool kSingleChunk = false;
  const TaskEntry<scalar_t, opmath_t>* entries;  // device memory, one per task

  __device__ __forceinline__ TaskEntry<scalar_t, opmath_t> entry(int task) const {
    return entries[task];
  }
};

template <class Tasks>
__device__ __forceinline__ int chunk_count(int num_tasks) {
  return Tasks::kSingleChunk ? 1 : (num_tasks + Tasks::kChunk - 1) / Tasks::kChunk;
}

// Copies a batch of task entries (pointers and leaks known on the host) into the device table.
// A kernel rather than a host-to-device copy, so that the call stays capturable in a CUDA graph.
template <typename Entry, int kBatch>
struct TaskBatch {
  Entry entries[kBatch];
  int begin;
  int count;
};

template <typename Entry, int kBatch>
__global__ void fill_task_table_kernel(Entry* table, const TaskBatch<Entry, kBatch> batch) {
  const int index = static_cast<int>(threadIdx.x);
  if (index < batch.count) table[batch.begin + index] = batch.entries[index];
}

// ---------------------------------------------------------------------------------------------
// Statistics and keep_grad_norm's sums. Each kernel writes partial rows in the layout of
// ops::accumulator_size (src/ops/combine_op.h), one row per unit of work whose size depends only
// on the call (a tile of elements; a group of kStatisticsGroup columns, per chunk of rows), never
// on the grid or the device; sum_rows_in_order_kernel then adds the rows in an order fixed by
// their count. So the statistics and the norms are the same on every GPU, whatever its SM count.

constexpr int kStatisticsGroup = 16;  // columns per marginalised statistics row (as on the CPU)

// Sum over a block of kThreads threads in a fixed tree (shuffles within each warp, then the
// warps in order), valid in thread 0; every thread of the block must call it.
__device__ __forceinline__ double block_sum(double value, double* scratch /* [kWarps] */) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_down_sync(kFullWarp, value, offset);
  }
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) total += scratch[w];
  }
  __syncthreads();
  return total;
}

__device__ __forceinline__ uint32_t warp_sum(uint32_t value) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return __reduce_add_sync(kFullWarp, value);
#else
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullWarp, value, offset);
  return value;
#endif
}

}  // namespace cuda_kernels
}  // namespace graddrop
