// The vectorised CPU kernels of graddrop::combine, compiled once per instruction set: each of
// combine_kernel_{baseline,avx2,avx512}.cpp defines GRADDROP_CPU_NAMESPACE and includes this
// file, and ATen-free code here is all that the -mavx* flags touch (see combine_kernel_params.h).
//
// The math is detail/math.h's, called per element (the mask rule is written without branches,
// so it vectorises), and the draw is
// detail/philox.h's (detail/philox_simd.h's vector form on AVX2 and AVX-512). The loops around
// them are written so the compiler vectorises them (`omp simd`, small blocks in L1, the task
// count a template parameter for n <= 8, -fno-trapping-math): conversion to op-math, sign
// signal, purity, keep function, masks and the weighted sum. Every level computes the same
// values in the same order, so results are bit-identical across instruction sets, thread counts
// and strip widths.
//
// Per-element mode streams blocks of kBlock elements: A and every g_i are read from memory once
// (a second read of a block hits L1) and the output is written once. Each block prefetches the
// inputs of a block kPrefetchBlocks ahead, so the memory streams keep going while the Philox
// draw (pure arithmetic, ~1/4 of the kernel's time on AVX-512) runs.
//
// Marginalised mode works on column strips sized by the caller to fit L2: pass 1 sums the task
// signals of the strip over all rows, then P, U and the coefficients c_i of its columns are
// computed, then pass 2 writes the strip's output re-reading the gradients while they are
// still in cache. Column sums follow the canonical order of detail/math.h (row lanes, a fixed
// tree, chunks in order), whatever the strip, so they equal the GPU's bit for bit.
#ifndef GRADDROP_CPU_NAMESPACE
#error "define GRADDROP_CPU_NAMESPACE before including combine_kernel_impl.h"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "cpu/combine_kernel_params.h"
#include "detail/math.h"
#include "detail/philox.h"
#include "detail/philox_simd.h"

// Asserts that the iterations of the next loop are independent, so the compiler vectorises it
// without run-time alias checks (the loops read up to 8 task arrays and write several others).
#define GRADDROP_SIMD_LOOP _Pragma("omp simd")
// Unrolls a loop over a compile-time task count completely, before vectorisation: otherwise the
// loop over positions around it keeps an inner loop and stays scalar.
#define GRADDROP_UNROLL_TASKS _Pragma("GCC unroll 8")

namespace graddrop {
namespace cpu {
namespace GRADDROP_CPU_NAMESPACE {
namespace {

// Elements per block in per-element mode: a multiple of the Philox group (4) and of every
// vector width, small enough that a block of every task stays in L1.
constexpr int64_t kBlock = 256;

inline int64_t smaller(int64_t a, int64_t b) { return a < b ? a : b; }

// Blocks (rows in marginalised mode) ahead that the loops prefetch: the Philox draw of a block
// is pure arithmetic, and without software prefetch the memory streams sit idle while it runs
// (docs/performance.md).
constexpr int64_t kPrefetchBlocks = 4;

// Asks for the cache lines of data[first, first + count) (clipped to `size` elements) with the
// L2 hint (prefetcht1): with dozens of task streams it ran faster than the L1 hint, which leaves
// fewer lines in flight (docs/performance.md, "Many tasks").
template <typename T>
inline void prefetch_range(const T* data, int64_t first, int64_t count, int64_t size) {
  const int64_t end = smaller(first + count, size);
  const char* begin_byte = reinterpret_cast<const char*>(data + first);
  const char* end_byte = reinterpret_cast<const char*>(data + end);
  for (const char* line = begin_byte; line < end_byte; line += 64) __builtin_prefetch(line, 0, 2);
}

// ---- Storage types and their conversion to op-math ---------------------------------------
// Written out here (not c10::Half / c10::BFloat16) so that the conversions vectorise and so
// that no c10 inline function gets compiled with this file's instruction set.

inline float float_from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline uint32_t bits_from_float(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

struct Float32 {
  using storage_t = float;
  using opmath_t = float;
  static constexpr bool kConverted = false;
};

struct Float64 {
  using storage_t = double;
  using opmath_t = double;
  static constexpr bool kConverted = false;
};

struct BFloat16 {
  using storage_t = uint16_t;  // the bits of c10::BFloat16
  using opmath_t = float;
  static constexpr bool kConverted = true;
  static float to_opmath(uint16_t value) { return float_from_bits(uint32_t(value) << 16); }
  // Round to nearest even; NaN becomes 0x7FC0. The same rule as c10::BFloat16(float).
  static uint16_t from_opmath(float value) {
    const uint32_t bits = bits_from_float(value);
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    return value != value ? uint16_t(0x7FC0) : uint16_t(rounded);
  }
};

struct Float16 {
  using storage_t = uint16_t;  // the bits of c10::Half
  using opmath_t = float;
  static constexpr bool kConverted = true;
  // IEEE binary16 <-> binary32, exact and branch-free (M. Dukhan's FP16 library, the algorithm
  // c10::Half uses when it has no F16C instruction).
  static float to_opmath(uint16_t value) {
    const uint32_t w = uint32_t(value) << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = float_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = float_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t magnitude =
        two_w < (1u << 27) ? bits_from_float(denormalized) : bits_from_float(normalized);
    return float_from_bits(sign | magnitude);
  }
  // Round to nearest even; NaN becomes a quiet NaN of the same sign.
  static uint16_t from_opmath(float value) {
    float base = (std::fabs(value) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = bits_from_float(value);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    bias = bias < 0x71000000u ? 0x71000000u : bias;
    base = float_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = bits_from_float(base);
    const uint32_t exponent_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t magnitude = shl1_w > 0xFF000000u ? 0x7E00u : exponent_bits + mantissa_bits;
    return uint16_t((sign >> 16) | magnitude);
  }
};

// The op-math values of `count` stored elements: the data itself for float and double, else
// converted into `buffer`.
template <typename Type>
const typename Type::opmath_t* opmath_view(const typename Type::storage_t* data, int64_t count,
                                           typename Type::opmath_t* buffer) {
  if constexpr (Type::kConverted) {
    GRADDROP_SIMD_LOOP
    for (int64_t k = 0; k < count; ++k) buffer[k] = Type::to_opmath(data[k]);
    return buffer;
  } else {
    (void)count;
    (void)buffer;
    return data;
  }
}

// Copies `bytes` bytes to `target` with non-temporal stores (plain copies for the unaligned
// head and tail): the lines go to memory without being read first or kept in the cache.
inline void stream_bytes(const void* source, void* target, int64_t bytes) {
  auto* to = static_cast<char*>(target);
  const auto* from = static_cast<const char*>(source);
#if defined(__SSE2__)
  const int64_t head =
      smaller(bytes, static_cast<int64_t>((16 - reinterpret_cast<uintptr_t>(to) % 16) % 16));
  std::memcpy(to, from, static_cast<size_t>(head));
  int64_t done = head;
#if defined(__AVX512F__)
  if (reinterpret_cast<uintptr_t>(to + done) % 64 == 0) {
    for (; done + 64 <= bytes; done += 64) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(to + done),
                          _mm512_loadu_si512(reinterpret_cast<const void*>(from + done)));
    }
  }
#elif defined(__AVX2__)
  if (reinterpret_cast<uintptr_t>(to + done) % 32 == 0) {
    for (; done + 32 <= bytes; done += 32) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(to + done),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from + done)));
    }
  }
#endif
  for (; done + 16 <= bytes; done += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(to + done),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(from + done)));
  }
  std::memcpy(to + done, from + done, static_cast<size_t>(bytes - done));
#else
  std::memcpy(to, from, static_cast<size_t>(bytes));
#endif
}

// Orders this thread's streaming stores before whatever follows (the end of the parallel
// region, after which other threads read the output).
inline void finish_streaming() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Where a block's op-math output is computed: straight into the output for float and double
// with plain stores, else into `buffer` (store_block then converts, streams or copies it).
// `in_place` says the loop writes each output element only after it has read that element of
// every task: true for a compile-time task count (one pass over the tasks per element); the
// run-time task count accumulates over the tasks in the output, which may be one of the task
// gradients (combine_out), so it works in `buffer`.
template <typename Type>
typename Type::opmath_t* output_target(typename Type::storage_t* data, bool stream,
                                       bool in_place, typename Type::opmath_t* buffer) {
  if constexpr (Type::kConverted) {
    return buffer;
  } else {
    return stream || !in_place ? buffer : reinterpret_cast<typename Type::opmath_t*>(data);
  }
}

// Stores `count` op-math values computed at output_target(data, stream, ...) into `data`.
// `scratch` holds count storage values (the converted block before it is streamed).
template <typename Type>
void store_block(const typename Type::opmath_t* values, int64_t count,
                 typename Type::storage_t* data, bool stream,
                 typename Type::storage_t* scratch) {
  using S = typename Type::storage_t;
  if constexpr (Type::kConverted) {
    S* converted = stream ? scratch : data;
    GRADDROP_SIMD_LOOP
    for (int64_t k = 0; k < count; ++k) converted[k] = Type::from_opmath(values[k]);
    if (stream) stream_bytes(converted, data, count * static_cast<int64_t>(sizeof(S)));
  } else if (stream) {
    stream_bytes(values, data, count * static_cast<int64_t>(sizeof(S)));
  } else if (values != reinterpret_cast<const typename Type::opmath_t*>(data)) {
    GRADDROP_SIMD_LOOP
    for (int64_t k = 0; k < count; ++k) data[k] = values[k];
  }
}

// ---- Scratch memory ------------------------------------------------------------------------

// Carves 64-byte aligned arrays out of the caller's scratch; with a null base it only counts
// the bytes (the same code sizes and lays out the scratch).
class ScratchArena {
 public:
  explicit ScratchArena(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* take(int64_t count) {
    T* pointer = base_ != nullptr ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += (count * static_cast<int64_t>(sizeof(T)) + 63) / 64 * 64;
    return pointer;
  }
  int64_t used() const { return used_; }

 private:
  char* base_;
  int64_t used_ = 0;
};

// Per-position statistics of a block (per-element mode) or strip (marginalised mode): lane k
// accumulates position k only, so the vectorised loops need no cross-lane reduction and the
// final fold runs in a fixed order.
struct Lanes {
  int64_t width = 0;
  int32_t* kept = nullptr;      // [num_tasks][width]
  int32_t* conflict = nullptr;  // [width]
  double* purity = nullptr;     // [width]
  double* output_square = nullptr;
  double* plain_square = nullptr;

  Lanes(ScratchArena& arena, int64_t num_tasks, int64_t lane_width) : width(lane_width) {
    kept = arena.take<int32_t>(num_tasks * width);
    conflict = arena.take<int32_t>(width);
    purity = arena.take<double>(width);
    output_square = arena.take<double>(width);
    plain_square = arena.take<double>(width);
  }

  void clear(int64_t num_tasks) {
    for (int64_t k = 0; k < num_tasks * width; ++k) kept[k] = 0;
    for (int64_t k = 0; k < width; ++k) {
      conflict[k] = 0;
      purity[k] = 0.0;
      output_square[k] = 0.0;
      plain_square[k] = 0.0;
    }
  }

  // Adds positions [begin, end) into `partial` (partial_stride values), position by position.
  void fold(int64_t num_tasks, int64_t begin, int64_t end, double* partial) const {
    for (int64_t i = 0; i < num_tasks; ++i) {
      int64_t count = 0;
      for (int64_t k = begin; k < end; ++k) count += kept[i * width + k];
      partial[i] += static_cast<double>(count);
    }
    int64_t conflicts = 0;
    double purity_sum = 0.0, output_sum = 0.0, plain_sum = 0.0;
    for (int64_t k = begin; k < end; ++k) {
      conflicts += conflict[k];
      purity_sum += purity[k];
      output_sum += output_square[k];
      plain_sum += plain_square[k];
    }
    partial[num_tasks] += purity_sum;
    partial[num_tasks + 1] += static_cast<double>(conflicts);
    partial[num_tasks + 2] += output_sum;
    partial[num_tasks + 3] += plain_sum;
  }
};

// Work arrays of one block (per-element mode) or one strip (marginalised mode), `width`
// positions each.
template <typename O>
struct Buffers {
  O* signal;          // s(A), or in marginalised mode per row
  O* purity;          // P
  O* keep;            // f(P)
  O* uniform;         // U (drawn)
  O* combined;        // the output in op-math, before conversion
  O* tasks;           // [num_tasks][width] converted task gradients
  O* signed_sum;      // generic-n temporaries
  O* absolute_sum;
  O* plain_sum;
  int32_t* positive;
  int32_t* negative;
  O* leak;            // [num_tasks]
  const O** views;    // [num_tasks] op-math views of this block's task gradients
  O* column_sums;     // marginalised: [num_tasks][width] sum over rows of s(A) * g_i
  O* lane_sums;       // marginalised: [kRowLanes][group tasks][width] a task group's row lanes
  O* coefficients;    // marginalised: [num_tasks][width] c_i per column
  O* stored;          // the converted output of a block before it is streamed (width values)
  Lanes lanes;

  Buffers(ScratchArena& arena, int64_t num_tasks, int64_t width, bool marginalised)
      : signal(arena.take<O>(width)),
        purity(arena.take<O>(width)),
        keep(arena.take<O>(width)),
        uniform(arena.take<O>(width)),
        combined(arena.take<O>(width)),
        tasks(arena.take<O>(num_tasks * width)),
        signed_sum(arena.take<O>(width)),
        absolute_sum(arena.take<O>(width)),
        plain_sum(arena.take<O>(width)),
        positive(arena.take<int32_t>(width)),
        negative(arena.take<int32_t>(width)),
        leak(arena.take<O>(num_tasks)),
        views(arena.take<const O*>(num_tasks)),
        column_sums(arena.take<O>(marginalised ? num_tasks * width : 0)),
        lane_sums(arena.take<O>(
            marginalised ? detail::kRowLanes * smaller(num_tasks, kTaskGroup) * width : 0)),
        coefficients(arena.take<O>(marginalised ? num_tasks * width : 0)),
        stored(arena.take<O>(width)),
        lanes(arena, num_tasks, width) {}
};

// ---- The per-position math, vectorised over positions ---------------------------------------

#if defined(__AVX512F__)
constexpr int64_t kPhiloxLanes = 16;  // groups per vector register
#elif defined(__AVX2__)
constexpr int64_t kPhiloxLanes = 8;
#endif

#if defined(__AVX512F__) || defined(__AVX2__)
// U of kSets * kPhiloxLanes groups from `first_group` on (detail/philox_simd.h).
template <int kSets, typename O>
void draw_vector_groups(uint64_t seed, uint64_t offset, uint64_t first_group, O* uniform) {
  constexpr int64_t kValues = 4 * kPhiloxLanes * kSets;
  alignas(64) float converted[kValues];
  float* values = std::is_same<O, float>::value ? reinterpret_cast<float*>(uniform) : converted;
#if defined(__AVX512F__)
  detail::philox_uniform_avx512<kSets>(seed, offset, first_group, values);
#else
  detail::philox_uniform_avx2<kSets>(seed, offset, first_group, values);
#endif
  if constexpr (!std::is_same<O, float>::value) {
    for (int64_t k = 0; k < kValues; ++k) uniform[k] = static_cast<O>(values[k]);
  }
}
#endif

// U for logical indices [first, first + count), first a multiple of 4: one Philox call per group
// of four, the groups of a whole block side by side (detail/philox_simd.h where the instruction
// set has it). Writes a multiple of 4 values.
template <typename O>
void draw_uniform(uint64_t seed, uint64_t offset, int64_t first, int64_t count, O* uniform) {
  const int64_t groups = (count + 3) / 4;
  const uint64_t first_group = static_cast<uint64_t>(first) / 4;
  int64_t group = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
  // Two registers of groups per call where the block allows: independent Philox chains side by
  // side keep the multiplier busy while each waits for its products (four run out of
  // registers; docs/performance.md has the draw's benchmark).
  for (; group + 2 * kPhiloxLanes <= groups; group += 2 * kPhiloxLanes) {
    draw_vector_groups<2>(seed, offset, first_group + static_cast<uint64_t>(group),
                          uniform + 4 * group);
  }
  for (; group + kPhiloxLanes <= groups; group += kPhiloxLanes) {
    draw_vector_groups<1>(seed, offset, first_group + static_cast<uint64_t>(group),
                          uniform + 4 * group);
  }
#endif
  GRADDROP_SIMD_LOOP
  for (int64_t rest = group; rest < groups; ++rest) {
    const detail::PhiloxWords words =
        detail::philox_group(seed, offset, first_group + static_cast<uint64_t>(rest));
    for (int word = 0; word < 4; ++word) {
      uniform[4 * rest + word] = static_cast<O>(detail::uniform_from_word(words.w[word]));
    }
  }
}

// s(A) (in place is allowed).
template <typename O>
void signal_of_activation(const O* activation, int64_t count, SignSource source, O* signal) {
  switch (source) {
    case SignSource::kActivationSign:
      GRADDROP_SIMD_LOOP
      for (int64_t k = 0; k < count; ++k) {
        signal[k] = detail::sign_signal(activation[k], SignSource::kActivationSign);
      }
      return;
    case SignSource::kActivationValue:
      GRADDROP_SIMD_LOOP
      for (int64_t k = 0; k < count; ++k) {
        signal[k] = detail::sign_signal(activation[k], SignSource::kActivationValue);
      }
      return;
    default:
      GRADDROP_SIMD_LOOP
      for (int64_t k = 0; k < count; ++k) {
        signal[k] = detail::sign_signal(activation[k], SignSource::kNone);
      }
      return;
  }
}

// ---- Sums over tasks --------------------------------------------------------------------------
// Every sum over tasks adds the tasks one after another in task order, starting from 0. Up to 8
// tasks the count is a template parameter: one group holds every task (kWhole), the task loop
// unrolls completely and the running sums stay in registers from 0 to the result. A count known
// only at run time goes in groups of kTaskGroup (the last one shorter), each a compile-time count:
// the running sums stay in registers across a group and go through memory once per group, where
// a plain loop over tasks would load and store them once per task. Both are the loops below, so
// every task count gives the bits the unrolled form gives.

template <int kCount>
using TaskCount = std::integral_constant<int, kCount>;

// Calls body(first, TaskCount<k>()) for the groups [first, first + k) of [0, num_tasks), in order.
template <typename Body>
void for_each_task_group(int64_t num_tasks, Body&& body) {
  int64_t first = 0;
  for (; first + kTaskGroup <= num_tasks; first += kTaskGroup) body(first, TaskCount<kTaskGroup>());
  switch (num_tasks - first) {
    case 1:
      return body(first, TaskCount<1>());
    case 2:
      return body(first, TaskCount<2>());
    case 3:
      return body(first, TaskCount<3>());
    case 4:
      return body(first, TaskCount<4>());
    case 5:
      return body(first, TaskCount<5>());
    case 6:
      return body(first, TaskCount<6>());
    case 7:
      return body(first, TaskCount<7>());
    default:
      return;
  }
}

// P of position k from its task-signal sums, and (with statistics) its purity and conflict lanes.
template <typename O, bool kAccumulate>
inline void finish_purity(int64_t k, O signed_sum, O absolute_sum, int32_t positive,
                          int32_t negative, O epsilon, Buffers<O>& buffers) {
  const O value = detail::purity(signed_sum, absolute_sum, epsilon);
  buffers.purity[k] = value;
  if constexpr (kAccumulate) {
    buffers.lanes.purity[k] += static_cast<double>(value);
    buffers.lanes.conflict[k] += positive & negative;
  }
}

// The statistics lanes of position k: the squares of the output and of the plain sum.
template <typename O>
inline void add_squares(int64_t k, O out, O plain, Lanes& lanes) {
  lanes.output_square[k] += static_cast<double>(out) * static_cast<double>(out);
  lanes.plain_square[k] += static_cast<double>(plain) * static_cast<double>(plain);
}

// The task signals G_i of kCount tasks summed for positions [0, count): G_i = signal * task_i,
// or task_i itself without a signal (marginalised P from column sums). kWhole: these are all the
// tasks, and the sums end as P; else they continue buffers' running sums (signed, absolute, and
// with statistics the signs seen, for the conflict count).
template <typename O, int kCount, bool kHasSignal, bool kAccumulate, bool kWhole>
void add_task_signals(const O* signal, const O* const* views, int64_t count, O epsilon,
                      Buffers<O>& buffers) {
  const O* task[kCount];
  GRADDROP_UNROLL_TASKS
  for (int i = 0; i < kCount; ++i) task[i] = views[i];
  O* signed_sum = buffers.signed_sum;
  O* absolute_sum = buffers.absolute_sum;
  int32_t* positive = buffers.positive;
  int32_t* negative = buffers.negative;
  constexpr bool kLoadSigns = kAccumulate && !kWhole;
  GRADDROP_SIMD_LOOP
  for (int64_t k = 0; k < count; ++k) {
    O signed_value = kWhole ? O(0) : signed_sum[k];
    O absolute_value = kWhole ? O(0) : absolute_sum[k];
    int32_t any_positive = kLoadSigns ? positive[k] : 0;
    int32_t any_negative = kLoadSigns ? negative[k] : 0;
    GRADDROP_UNROLL_TASKS
    for (int i = 0; i < kCount; ++i) {
      const O task_signal = kHasSignal ? signal[k] * task[i][k] : task[i][k];
      signed_value += task_signal;
      absolute_value += std::abs(task_signal);
      any_positive |= task_signal > O(0);
      any_negative |= task_signal < O(0);
    }
    if constexpr (kWhole) {
      finish_purity<O, kAccumulate>(k, signed_value, absolute_value, any_positive, any_negative,
                                    epsilon, buffers);
    } else {
      signed_sum[k] = signed_value;
      absolute_sum[k] = absolute_value;
      if constexpr (kAccumulate) {
        positive[k] = any_positive;
        negative[k] = any_negative;
      }
    }
  }
}

// Per-element mode: c_i * g_i of kCount tasks (the first one task `first`) summed into combined
// for positions [0, count); with statistics also g_i (the plain sum) and M_i (the tasks' kept
// lanes). kWhole: these are all the tasks, and the statistics lanes take the squares; else the
// sums continue combined and buffers.plain_sum.
template <typename O, int kCount, bool kAccumulate, bool kWhole>
void add_masked_tasks(const O* signal, const O* const* views, const O* leak, const O* keep,
                      const O* uniform, ZeroSign zero_sign, int64_t count, int64_t first,
                      O* combined, Buffers<O>& buffers) {
  const O* task[kCount];
  O task_leak[kCount];
  GRADDROP_UNROLL_TASKS
  for (int i = 0; i < kCount; ++i) {
    task[i] = views[i];
    task_leak[i] = leak[i];
  }
  Lanes& lanes = buffers.lanes;
  const int64_t lane_width = lanes.width;
  int32_t* kept = lanes.kept + first * lane_width;
  O* plain = buffers.plain_sum;
  GRADDROP_SIMD_LOOP
  for (int64_t k = 0; k < count; ++k) {
    O out = kWhole ? O(0) : combined[k];
    O plain_value = kAccumulate && !kWhole ? plain[k] : O(0);
    GRADDROP_UNROLL_TASKS
    for (int i = 0; i < kCount; ++i) {
      const O grad = task[i][k];
      const O task_signal = signal[k] * grad;
      out += detail::task_coefficient(task_signal, keep[k], uniform[k], task_leak[i], zero_sign) *
             grad;
      if constexpr (kAccumulate) {
        plain_value += grad;
        kept[i * lane_width + k] += detail::sign_mask(task_signal, keep[k], uniform[k], zero_sign);
      }
    }
    combined[k] = out;
    if constexpr (kAccumulate && kWhole) add_squares(k, out, plain_value, lanes);
    if constexpr (kAccumulate && !kWhole) plain[k] = plain_value;
  }
}

// Marginalised pass 2: c_i * g_i of kCount tasks summed into combined for positions
// [0, count) (coefficient i at coefficients + i * stride); with statistics also g_i. kWhole as
// for add_masked_tasks.
template <typename O, int kCount, bool kAccumulate, bool kWhole>
void add_weighted_tasks(const O* coefficients, int64_t stride, const O* const* views,
                        int64_t count, O* combined, Buffers<O>& buffers) {
  const O* task[kCount];
  const O* coefficient[kCount];
  GRADDROP_UNROLL_TASKS
  for (int i = 0; i < kCount; ++i) {
    task[i] = views[i];
    coefficient[i] = coefficients + i * stride;
  }
  O* plain = buffers.plain_sum;
  GRADDROP_SIMD_LOOP
  for (int64_t c = 0; c < count; ++c) {
    O out = kWhole ? O(0) : combined[c];
    O plain_value = kAccumulate && !kWhole ? plain[c] : O(0);
    GRADDROP_UNROLL_TASKS
    for (int i = 0; i < kCount; ++i) {
      const O grad = task[i][c];
      out += coefficient[i][c] * grad;
      if constexpr (kAccumulate) plain_value += grad;
    }
    combined[c] = out;
    if constexpr (kAccumulate && kWhole) add_squares(c, out, plain_value, buffers.lanes);
    if constexpr (kAccumulate && !kWhole) plain[c] = plain_value;
  }
}

// Zeroes the running sums that groups of a run-time task count continue, for positions
// [0, count): the task-signal sums (purity_of), or the output and plain sums.
template <typename O>
void clear_signal_sums(int64_t count, Buffers<O>& buffers) {
  GRADDROP_SIMD_LOOP
  for (int64_t k = 0; k < count; ++k) {
    buffers.signed_sum[k] = 0;
    buffers.absolute_sum[k] = 0;
    buffers.positive[k] = 0;
    buffers.negative[k] = 0;
  }
}

template <typename O>
void clear_output_sums(int64_t count, O* combined, Buffers<O>& buffers) {
  GRADDROP_SIMD_LOOP
  for (int64_t k = 0; k < count; ++k) {
    combined[k] = 0;
    buffers.plain_sum[k] = 0;
  }
}

// The purity P of positions whose task signals are G_i = signal * task_i (per-element mode:
// signal = s(A)), or G_i = task_i (marginalised mode, a run-time count only: signal = nullptr
// and task_i = the column sums of G_i), into buffers.purity.
template <typename O, int kTasks, bool kAccumulate>
void purity_of(const O* signal, const O* const* views, int64_t num_tasks, int64_t count,
               O epsilon, Buffers<O>& buffers) {
  if constexpr (kTasks > 0) {
    add_task_signals<O, kTasks, true, kAccumulate, true>(signal, views, count, epsilon, buffers);
  } else {
    clear_signal_sums<O>(count, buffers);
    for_each_task_group(num_tasks, [&](int64_t first, auto group) {
      constexpr int kCount = decltype(group)::value;
      if (signal != nullptr) {
        add_task_signals<O, kCount, true, kAccumulate, false>(signal, views + first, count,
                                                              epsilon, buffers);
      } else {
        add_task_signals<O, kCount, false, kAccumulate, false>(nullptr, views + first, count,
                                                               epsilon, buffers);
      }
    });
    GRADDROP_SIMD_LOOP
    for (int64_t k = 0; k < count; ++k) {
      finish_purity<O, kAccumulate>(k, buffers.signed_sum[k], buffers.absolute_sum[k],
                                    buffers.positive[k], buffers.negative[k], epsilon, buffers);
    }
  }
}

// f(P): the built-in function, or the explicit values when given (the custom keep function);
// with an explicit f(P) or U, NaN where they cannot be used (detail::checked_keep).
template <typename O>
const O* keep_of(const O* purity, const O* explicit_keep, const O* explicit_uniform,
                 int64_t count, KeepFunction function, O scale, O* keep) {
  if (explicit_keep != nullptr) {
    GRADDROP_SIMD_LOOP
    for (int64_t k = 0; k < count; ++k) keep[k] = detail::checked_keep(purity[k], explicit_keep[k]);
  } else if (function == KeepFunction::kSigmoid) {
    for (int64_t k = 0; k < count; ++k) {
      keep[k] = detail::keep_probability(purity[k], KeepFunction::kSigmoid, scale);
    }
  } else {
    GRADDROP_SIMD_LOOP
    for (int64_t k = 0; k < count; ++k) {
      keep[k] = detail::keep_probability(purity[k], KeepFunction::kLinear, scale);
    }
  }
  if (explicit_uniform != nullptr) {
    GRADDROP_SIMD_LOOP
    for (int64_t k = 0; k < count; ++k) keep[k] = detail::keep_for_uniform(keep[k], explicit_uniform[k]);
  }
  return keep;
}

// Per-element mode: out = sum_i c_i * g_i with c_i from G_i = s(A) * g_i, f(P) and U.
template <typename O, int kTasks, bool kAccumulate>
void combine_elements(const O* signal, const O* const* views, int64_t num_tasks, const O* keep,
                      const O* uniform, const O* leak, ZeroSign zero_sign, int64_t count,
                      O* combined, Buffers<O>& buffers) {
  if constexpr (kTasks > 0) {
    add_masked_tasks<O, kTasks, kAccumulate, true>(signal, views, leak, keep, uniform, zero_sign,
                                                   count, 0, combined, buffers);
  } else {
    clear_output_sums<O>(count, combined, buffers);
    for_each_task_group(num_tasks, [&](int64_t first, auto group) {
      add_masked_tasks<O, decltype(group)::value, kAccumulate, false>(
          signal, views + first, leak + first, keep, uniform, zero_sign, count, first, combined,
          buffers);
    });
    if constexpr (kAccumulate) {
      GRADDROP_SIMD_LOOP
      for (int64_t k = 0; k < count; ++k) {
        add_squares(k, combined[k], buffers.plain_sum[k], buffers.lanes);
      }
    }
  }
}

// Marginalised pass 1, one chunk of rows of a strip for the kCount tasks grads[0, kCount):
// sums_i += the chunk's sum over rows of s(A) * g_i, in the canonical order of detail/math.h
// (row lane l adds rows l, l + 8, ... from 0, then the fixed tree). A row of the strip is read
// once for the whole group; the group's lanes (kRowLanes x kCount rows of the strip) stay in
// cache whatever the task count. sums_i is at sums + i * width.
template <typename Type, int kCount>
void add_chunk_column_sums(const KernelParams& params, const typename Type::storage_t* const* grads,
                           int64_t chunk_first, int64_t chunk_end, int64_t first_column,
                           int64_t count, int64_t width, Buffers<typename Type::opmath_t>& buffers,
                           typename Type::opmath_t* sums) {
  using O = typename Type::opmath_t;
  const auto* activation = static_cast<const typename Type::storage_t*>(params.activation);
  const int64_t size = params.rows * params.columns;
  const int64_t lane_stride = kCount * width;
  for (int64_t k = 0; k < detail::kRowLanes * lane_stride; ++k) buffers.lane_sums[k] = 0;
  for (int64_t row = chunk_first; row < chunk_end; ++row) {
    const int64_t base = row * params.columns + first_column;
    if (row + kPrefetchBlocks < params.rows) {
      const int64_t ahead = base + kPrefetchBlocks * params.columns;
      prefetch_range(activation, ahead, count, size);
      GRADDROP_UNROLL_TASKS
      for (int i = 0; i < kCount; ++i) prefetch_range(grads[i], ahead, count, size);
    }
    const O* activation_values = opmath_view<Type>(activation + base, count, buffers.signal);
    signal_of_activation(activation_values, count, params.sign_source, buffers.signal);
    const O* signal = buffers.signal;
    const O* task[kCount];
    O* lane[kCount];
    GRADDROP_UNROLL_TASKS
    for (int i = 0; i < kCount; ++i) {
      task[i] = opmath_view<Type>(grads[i] + base, count, buffers.tasks + i * width);
      lane[i] = buffers.lane_sums + (row % detail::kRowLanes) * lane_stride + i * width;
    }
    GRADDROP_SIMD_LOOP
    for (int64_t c = 0; c < count; ++c) {
      GRADDROP_UNROLL_TASKS
      for (int i = 0; i < kCount; ++i) lane[i][c] += signal[c] * task[i][c];
    }
  }
  for (int i = 0; i < kCount; ++i) {
    const O* lanes = buffers.lane_sums + i * width;
    O* task_sums = sums + i * width;
    GRADDROP_SIMD_LOOP
    for (int64_t c = 0; c < count; ++c) {
      task_sums[c] += detail::sum_of_row_lanes(lanes + c, lane_stride);
    }
  }
}

// Marginalised: c_i per column from the column sums (once per strip, so the generic form).
template <typename O, bool kAccumulate>
void column_coefficients(const O* column_sums, int64_t num_tasks, int64_t stride, const O* keep,
                         const O* uniform, const O* leak, ZeroSign zero_sign, int64_t count,
                         O* coefficients, Lanes& lanes) {
  for (int64_t i = 0; i < num_tasks; ++i) {
    const O* sums = column_sums + i * stride;
    O* coefficient = coefficients + i * stride;
    int32_t* kept = lanes.kept + i * lanes.width;
    const O task_leak = leak[i];
    GRADDROP_SIMD_LOOP
    for (int64_t c = 0; c < count; ++c) {
      coefficient[c] =
          detail::task_coefficient(sums[c], keep[c], uniform[c], task_leak, zero_sign);
      if constexpr (kAccumulate) {
        kept[c] += detail::sign_mask(sums[c], keep[c], uniform[c], zero_sign);
      }
    }
  }
}

// Marginalised pass 2, one row of a strip: out = sum_i c_i * g_i.
template <typename O, int kTasks, bool kAccumulate>
void apply_coefficients(const O* coefficients, int64_t stride, const O* const* views,
                        int64_t num_tasks, int64_t count, O* combined, Buffers<O>& buffers) {
  if constexpr (kTasks > 0) {
    add_weighted_tasks<O, kTasks, kAccumulate, true>(coefficients, stride, views, count, combined,
                                                     buffers);
  } else {
    clear_output_sums<O>(count, combined, buffers);
    for_each_task_group(num_tasks, [&](int64_t first, auto group) {
      add_weighted_tasks<O, decltype(group)::value, kAccumulate, false>(
          coefficients + first * stride, stride, views + first, count, combined, buffers);
    });
    if constexpr (kAccumulate) {
      GRADDROP_SIMD_LOOP
      for (int64_t c = 0; c < count; ++c) {
        add_squares(c, combined[c], buffers.plain_sum[c], buffers.lanes);
      }
    }
  }
}

// ---- Drivers ---------------------------------------------------------------------------------

// Runs `body` with the accumulate flag as a compile-time constant, so the loops without
// statistics carry none of their work.
template <typename Body>
void with_accumulate(bool accumulate, Body&& body) {
  if (accumulate) {
    body(std::true_type());
  } else {
    body(std::false_type());
  }
}

template <typename Type>
int64_t element_scratch_bytes_for(const KernelParams& params) {
  ScratchArena arena(nullptr);
  Buffers<typename Type::opmath_t> buffers(arena, params.num_tasks, kBlock, false);
  return arena.used();
}

template <typename Type, int kTasks>
void element_tiles(const KernelParams& params, int64_t tile_begin, int64_t tile_end,
                   double* partials, void* scratch) {
  using S = typename Type::storage_t;
  using O = typename Type::opmath_t;
  const int64_t num_tasks = kTasks > 0 ? kTasks : params.num_tasks;
  ScratchArena arena(scratch);
  Buffers<O> buffers(arena, num_tasks, kBlock, false);
  for (int64_t i = 0; i < num_tasks; ++i) buffers.leak[i] = static_cast<O>(params.leak[i]);
  const auto* activation = static_cast<const S*>(params.activation);
  const auto* const* grads = reinterpret_cast<const S* const*>(params.grads);
  auto* output = static_cast<S*>(params.output);
  const auto* explicit_uniform = static_cast<const O*>(params.uniform);
  const auto* explicit_keep = static_cast<const O*>(params.keep_probability);
  const O epsilon = static_cast<O>(params.epsilon);
  const O scale = static_cast<O>(params.scale);
  const int64_t numel = params.columns;
  const int64_t stride = partial_stride(num_tasks);
  const bool stream = params.stream_output;

  with_accumulate(params.accumulate, [&](auto accumulate) {
    constexpr bool kAccumulate = decltype(accumulate)::value;
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      if (kAccumulate) buffers.lanes.clear(num_tasks);
      const int64_t tile_end_element = smaller(numel, (tile + 1) * kElementTile);
      for (int64_t first = tile * kElementTile; first < tile_end_element; first += kBlock) {
        const int64_t count = smaller(kBlock, tile_end_element - first);
        const int64_t ahead = first + kPrefetchBlocks * kBlock;
        if (ahead < numel) {
          prefetch_range(activation, ahead, kBlock, numel);
          for (int64_t i = 0; i < num_tasks; ++i) prefetch_range(grads[i], ahead, kBlock, numel);
        }
        const O* uniform = buffers.uniform;
        if (explicit_uniform != nullptr) {
          uniform = explicit_uniform + first;
        } else {
          draw_uniform(params.seed, params.offset, first, count, buffers.uniform);
        }
        const O* activation_values =
            opmath_view<Type>(activation + first, count, buffers.signal);
        signal_of_activation(activation_values, count, params.sign_source, buffers.signal);
        for (int64_t i = 0; i < num_tasks; ++i) {
          buffers.views[i] = opmath_view<Type>(grads[i] + first, count, buffers.tasks + i * kBlock);
        }
        purity_of<O, kTasks, kAccumulate>(buffers.signal, buffers.views, num_tasks, count,
                                          epsilon, buffers);
        const O* keep = keep_of(buffers.purity,
                                explicit_keep != nullptr ? explicit_keep + first : nullptr,
                                explicit_uniform != nullptr ? uniform : nullptr, count,
                                params.keep_function, scale, buffers.keep);
        O* combined = output_target<Type>(output + first, stream, kTasks > 0, buffers.combined);
        combine_elements<O, kTasks, kAccumulate>(buffers.signal, buffers.views, num_tasks, keep,
                                                uniform, buffers.leak, params.zero_sign, count,
                                                combined, buffers);
        store_block<Type>(combined, count, output + first, stream,
                          reinterpret_cast<S*>(buffers.stored));
      }
      if (kAccumulate) buffers.lanes.fold(num_tasks, 0, kBlock, partials + tile * stride);
    }
  });
  if (stream) finish_streaming();
}

template <typename Type>
int64_t strip_scratch_bytes_for(const KernelParams& params, int64_t strip_width) {
  ScratchArena arena(nullptr);
  Buffers<typename Type::opmath_t> buffers(arena, params.num_tasks, strip_width, true);
  return arena.used();
}

template <typename Type, int kTasks>
void column_strips(const KernelParams& params, int64_t strip_width, int64_t strip_begin,
                   int64_t strip_end, double* partials, void* scratch) {
  using S = typename Type::storage_t;
  using O = typename Type::opmath_t;
  const int64_t num_tasks = kTasks > 0 ? kTasks : params.num_tasks;
  ScratchArena arena(scratch);
  Buffers<O> buffers(arena, num_tasks, strip_width, true);
  for (int64_t i = 0; i < num_tasks; ++i) buffers.leak[i] = static_cast<O>(params.leak[i]);
  const auto* const* grads = reinterpret_cast<const S* const*>(params.grads);
  auto* output = static_cast<S*>(params.output);
  const auto* explicit_uniform = static_cast<const O*>(params.uniform);
  const auto* explicit_keep = static_cast<const O*>(params.keep_probability);
  const O epsilon = static_cast<O>(params.epsilon);
  const O scale = static_cast<O>(params.scale);
  const int64_t rows = params.rows;
  const int64_t columns = params.columns;
  const int64_t stride = partial_stride(num_tasks);
  const int64_t width_stride = strip_width;
  auto* sums_out = static_cast<O*>(params.column_sums_out);
  const auto* sums_in = static_cast<const O*>(params.column_sums_in);
  const bool stream = params.stream_output && sums_out == nullptr;

  with_accumulate(params.accumulate, [&](auto accumulate) {
    constexpr bool kAccumulate = decltype(accumulate)::value;
    for (int64_t strip = strip_begin; strip < strip_end; ++strip) {
      const int64_t first_column = strip * strip_width;
      const int64_t count = smaller(strip_width, columns - first_column);
      if (kAccumulate) buffers.lanes.clear(num_tasks);

      // Pass 1: the signals summed over the batch in the canonical order of detail/math.h
      // (row lanes inside chunks of rows, a fixed tree, chunks in order), as the GPU sums them;
      // or the given (global) sums. Per chunk, the tasks in register groups.
      for (int64_t i = 0; i < num_tasks; ++i) {
        O* sums = buffers.column_sums + i * width_stride;
        const O* given = sums_in != nullptr ? sums_in + i * columns + first_column : nullptr;
        for (int64_t c = 0; c < count; ++c) sums[c] = given != nullptr ? given[c] : O(0);
      }
      const int64_t summed_rows = sums_in != nullptr ? 0 : rows;
      for (int64_t chunk_first = 0; chunk_first < summed_rows;
           chunk_first += detail::kRowChunk) {
        const int64_t chunk_end = smaller(summed_rows, chunk_first + detail::kRowChunk);
        for_each_task_group(num_tasks, [&](int64_t first, auto group) {
          add_chunk_column_sums<Type, decltype(group)::value>(
              params, grads + first, chunk_first, chunk_end, first_column, count, width_stride,
              buffers, buffers.column_sums + first * width_stride);
        });
      }

      if (sums_out != nullptr) {
        for (int64_t i = 0; i < num_tasks; ++i) {
          const O* sums = buffers.column_sums + i * width_stride;
          O* target = sums_out + i * columns + first_column;
          for (int64_t c = 0; c < count; ++c) target[c] = sums[c];
        }
        continue;
      }

      // P, f(P), U and c_i of the strip's columns.
      for (int64_t i = 0; i < num_tasks; ++i) {
        buffers.views[i] = buffers.column_sums + i * width_stride;
      }
      purity_of<O, 0, kAccumulate>(nullptr, buffers.views, num_tasks, count, epsilon, buffers);
      const O* uniform = buffers.uniform;
      if (explicit_uniform != nullptr) {
        uniform = explicit_uniform + first_column;
      } else {
        draw_uniform(params.seed, params.offset, first_column, count, buffers.uniform);
      }
      const O* keep = keep_of(buffers.purity,
                              explicit_keep != nullptr ? explicit_keep + first_column : nullptr,
                              explicit_uniform != nullptr ? uniform : nullptr, count,
                              params.keep_function, scale, buffers.keep);
      column_coefficients<O, kAccumulate>(buffers.column_sums, num_tasks, width_stride, keep,
                                          uniform, buffers.leak, params.zero_sign, count,
                                          buffers.coefficients, buffers.lanes);

      // Pass 2: the strip's gradients again, from cache when the strip fits.
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t base = row * columns + first_column;
        if (row + kPrefetchBlocks < rows) {
          for (int64_t i = 0; i < num_tasks; ++i) {
            prefetch_range(grads[i], base + kPrefetchBlocks * columns, count, rows * columns);
          }
        }
        for (int64_t i = 0; i < num_tasks; ++i) {
          buffers.views[i] =
              opmath_view<Type>(grads[i] + base, count, buffers.tasks + i * width_stride);
        }
        O* combined = output_target<Type>(output + base, stream, kTasks > 0, buffers.combined);
        apply_coefficients<O, kTasks, kAccumulate>(buffers.coefficients, width_stride,
                                                   buffers.views, num_tasks, count, combined,
                                                   buffers);
        store_block<Type>(combined, count, output + base, stream,
                          reinterpret_cast<S*>(buffers.stored));
      }

      if (kAccumulate) {
        for (int64_t group_first = 0; group_first < count; group_first += kColumnGroup) {
          const int64_t group = (first_column + group_first) / kColumnGroup;
          buffers.lanes.fold(num_tasks, group_first, smaller(count, group_first + kColumnGroup),
                             partials + group * stride);
        }
      }
    }
  });
  if (stream) finish_streaming();
}

// ---- Entry points: dtype and task-count dispatch ----------------------------------------------

template <typename Type>
void element_tiles_by_tasks(const KernelParams& params, int64_t tile_begin, int64_t tile_end,
                            double* partials, void* scratch) {
  switch (params.num_tasks) {
#define GRADDROP_TASK_CASE(n) \
  case n:                     \
    return element_tiles<Type, n>(params, tile_begin, tile_end, partials, scratch);
    GRADDROP_TASK_CASE(1)
    GRADDROP_TASK_CASE(2)
    GRADDROP_TASK_CASE(3)
    GRADDROP_TASK_CASE(4)
    GRADDROP_TASK_CASE(5)
    GRADDROP_TASK_CASE(6)
    GRADDROP_TASK_CASE(7)
    GRADDROP_TASK_CASE(8)
#undef GRADDROP_TASK_CASE
    default:
      return element_tiles<Type, 0>(params, tile_begin, tile_end, partials, scratch);
  }
}

template <typename Type>
void column_strips_by_tasks(const KernelParams& params, int64_t strip_width, int64_t strip_begin,
                            int64_t strip_end, double* partials, void* scratch) {
  switch (params.num_tasks) {
#define GRADDROP_TASK_CASE(n) \
  case n:                     \
    return column_strips<Type, n>(params, strip_width, strip_begin, strip_end, partials, scratch);
    GRADDROP_TASK_CASE(1)
    GRADDROP_TASK_CASE(2)
    GRADDROP_TASK_CASE(3)
    GRADDROP_TASK_CASE(4)
    GRADDROP_TASK_CASE(5)
    GRADDROP_TASK_CASE(6)
    GRADDROP_TASK_CASE(7)
    GRADDROP_TASK_CASE(8)
#undef GRADDROP_TASK_CASE
    default:
      return column_strips<Type, 0>(params, strip_width, strip_begin, strip_end, partials,
                                    scratch);
  }
}

// Calls body(Type()) with the storage type of `dtype`.
template <typename Body>
auto with_type(KernelDType dtype, Body&& body) {
  switch (dtype) {
    case KernelDType::kDouble:
      return body(Float64());
    case KernelDType::kHalf:
      return body(Float16());
    case KernelDType::kBFloat16:
      return body(BFloat16());
    default:
      return body(Float32());
  }
}

int64_t element_scratch_bytes(const KernelParams& params) {
  return with_type(params.dtype, [&](auto type) {
    return element_scratch_bytes_for<decltype(type)>(params);
  });
}

void combine_element_tiles(const KernelParams& params, int64_t tile_begin, int64_t tile_end,
                           double* partials, void* scratch) {
  with_type(params.dtype, [&](auto type) {
    element_tiles_by_tasks<decltype(type)>(params, tile_begin, tile_end, partials, scratch);
  });
}

int64_t strip_scratch_bytes(const KernelParams& params, int64_t strip_width) {
  return with_type(params.dtype, [&](auto type) {
    return strip_scratch_bytes_for<decltype(type)>(params, strip_width);
  });
}

void combine_column_strips(const KernelParams& params, int64_t strip_width, int64_t strip_begin,
                           int64_t strip_end, double* partials, void* scratch) {
  with_type(params.dtype, [&](auto type) {
    column_strips_by_tasks<decltype(type)>(params, strip_width, strip_begin, strip_end, partials,
                                           scratch);
  });
}

void draw_uniform_float(uint64_t seed, uint64_t offset, int64_t first, int64_t count,
                        float* uniform) {
  draw_uniform(seed, offset, first, count, uniform);
}

}  // namespace
}  // namespace GRADDROP_CPU_NAMESPACE
}  // namespace cpu
}  // namespace graddrop
