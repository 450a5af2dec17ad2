#pragma once
// The boundary between the CPU operator (combine_kernel.cpp: ATen, checks, threads) and the
// vectorised kernels (combine_kernel_impl.h, compiled once per instruction set). Only plain
// types cross it: the kernel translation units are compiled with -mavx2 / -mavx512f and must not
// instantiate ATen, c10 or standard-library code that a baseline caller could end up linked to.
#include <cstdint>

#include "detail/math.h"

namespace graddrop {
namespace cpu {

enum class KernelDType : int32_t { kFloat, kDouble, kHalf, kBFloat16 };

// Elements per tile in per-element mode. Threads take whole tiles and each tile reduces its
// statistics on its own, so the tile (not the thread) fixes the summation order.
constexpr int64_t kElementTile = 16384;
// Columns per statistics group in marginalised mode: strips are whole groups, and each group
// reduces its statistics on its own, so the strip width never changes a result.
constexpr int64_t kColumnGroup = 16;
// The widest column strip (bounds the per-thread scratch).
constexpr int64_t kMaxStripWidth = 2048;
// Tasks per register group when the task count is known only at run time: the kernels sum
// the tasks in groups of this many, and a group's row lanes bound the marginalised scratch.
constexpr int kTaskGroup = 8;

// One combine call, with undefined task gradients already removed (they contribute nothing to
// any sum; the caller accounts for their statistics).
struct KernelParams {
  KernelDType dtype = KernelDType::kFloat;
  const void* activation = nullptr;    // [rows, columns], contiguous
  const void* const* grads = nullptr;  // num_tasks pointers, contiguous like the activation
  const double* leak = nullptr;        // num_tasks values
  int64_t num_tasks = 0;
  int64_t rows = 1;                    // 1 in per-element mode
  int64_t columns = 0;                 // the number of purity elements
  SignSource sign_source = SignSource::kActivationSign;
  KeepFunction keep_function = KeepFunction::kLinear;
  ZeroSign zero_sign = ZeroSign::kDrop;
  double scale = 1.0;
  double epsilon = 1e-7;
  const void* uniform = nullptr;           // explicit U (op-math dtype, columns values) or null
  const void* keep_probability = nullptr;  // explicit f(P) (op-math dtype) or null
  uint64_t seed = 0;
  uint64_t offset = 0;
  void* output = nullptr;
  bool accumulate = false;  // fill the statistics partials
  // Write the output with non-temporal (streaming) stores: for outputs larger than the last-level
  // cache, a normal store first reads the line it writes (twice the write traffic) and evicts
  // inputs the kernel still needs. Changes no value.
  bool stream_output = false;
  // Marginalised mode only, for the data-parallel path (src/distributed): with column_sums_out
  // the strips stop after pass 1 and store the column sums (op-math, [num_tasks][columns]);
  // with column_sums_in they skip pass 1 and take these sums instead (the global ones).
  void* column_sums_out = nullptr;
  const void* column_sums_in = nullptr;
};

// The statistics partials of one tile or column group, in the layout of ops::accumulator_size:
// [kept count of (kept) task 0 .. n-1, sum of P, conflict count, sum out^2, sum (sum_i g_i)^2].
inline int64_t partial_stride(int64_t num_tasks) { return num_tasks + 4; }

// The kernels of one instruction set.
struct KernelTable {
  const char* name;
  // Per-element mode: tiles [tile_begin, tile_end) of kElementTile elements. `partials` holds
  // partial_stride values per tile (indexed by the absolute tile number); `scratch` holds
  // element_scratch_bytes bytes, 64-byte aligned.
  int64_t (*element_scratch_bytes)(const KernelParams&);
  void (*combine_element_tiles)(const KernelParams&, int64_t tile_begin, int64_t tile_end,
                                double* partials, void* scratch);
  // Marginalised mode: strips [strip_begin, strip_end) of `strip_width` columns (a multiple of
  // kColumnGroup). `partials` holds partial_stride values per column group.
  int64_t (*strip_scratch_bytes)(const KernelParams&, int64_t strip_width);
  void (*combine_column_strips)(const KernelParams&, int64_t strip_width, int64_t strip_begin,
                                int64_t strip_end, double* partials, void* scratch);
  // U of logical indices [first, first + count) (first a multiple of 4) as the kernels draw it;
  // writes count rounded up to a multiple of 4 values. For tests.
  void (*draw_uniform)(uint64_t seed, uint64_t offset, int64_t first, int64_t count,
                       float* uniform);
};

extern const KernelTable kBaselineKernels;
#if defined(GRADDROP_CPU_HAS_AVX2)
extern const KernelTable kAvx2Kernels;
#endif
#if defined(GRADDROP_CPU_HAS_AVX512)
extern const KernelTable kAvx512Kernels;
#endif

}  // namespace cpu
}  // namespace graddrop
