#pragma once
// Philox-4x32-10 of philox.h for many groups at once, in x86 vector registers (CPU kernels
// only): one lane per group, so a register of 16 (AVX-512) or 8 (AVX2) lanes runs that many
// groups side by side. The same rounds, constants and counter layout as philox4x32_10 and
// philox_group, and the same word-to-float conversion as uniform_from_word, so the values are
// bit-identical to the scalar ones (tests/cpu/cpu_kernel_test.cpp checks it for every
// instruction set). Compilers widen the 32x32->64-bit multiply of the scalar code to 64-bit
// lanes and back at every round; here the AVX-512 form keeps one group per 64-bit lane for all
// ten rounds (the product is both words at once), and the AVX2 form takes the high and low
// halves from two even/odd multiplies.
//
// Defined only where the translation unit is compiled for the instruction set (__AVX512F__,
// __AVX2__); the baseline kernels use philox_group.
#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "detail/philox.h"

namespace graddrop {
namespace detail {

// The constants of philox4x32_10 (Random123).
constexpr uint32_t kPhiloxMultiplier0 = 0xD2511F53u;
constexpr uint32_t kPhiloxMultiplier1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxWeyl0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxWeyl1 = 0xBB67AE85u;

#if defined(__AVX512F__)

// GCC 12 reports its own _mm512_undefined_epi32() (inside _mm512_mul_epu32 and the shifts) as
// maybe uninitialized.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// One Philox round for 8 groups, one per 64-bit lane, each word in the lane's low 32 bits (the
// high 32 bits are left-overs that no later step reads: _mm512_mul_epu32 reads only the low
// halves, and the xors pass the high halves along without mixing them into the low ones). The
// full 64-bit products are the words "lo" as they are; the shuffle moves each product's high
// word down. Per round: 2 multiplies, 2 shuffles and 2 three-way xors (ternary logic 0x96),
// spread over two ports, where the 32-bit-lane form needs 5 shifts, 2 blends and 4 xors more.
inline void philox_round_avx512(__m512i& w0, __m512i& w1, __m512i& w2, __m512i& w3,
                                __m512i multiplier0, __m512i multiplier1, __m512i key0,
                                __m512i key1) {
  const __m512i product0 = _mm512_mul_epu32(w0, multiplier0);
  const __m512i product1 = _mm512_mul_epu32(w2, multiplier1);
  w0 = _mm512_ternarylogic_epi32(_mm512_shuffle_epi32(product1, _MM_PERM_DDBB), w1, key0, 0x96);
  w1 = product1;
  w2 = _mm512_ternarylogic_epi32(_mm512_shuffle_epi32(product0, _MM_PERM_DDBB), w3, key1, 0x96);
  w3 = product0;
}

// Stores U of 16 groups, given their four words (group k in lane k), in index order.
inline void store_uniform_64_avx512(__m512i w0, __m512i w1, __m512i w2, __m512i w3,
                                    float* uniform);

// U of logical indices [4 * first_group, 4 * first_group + 64 * kSets): the four words of groups
// first_group .. first_group + 16 * kSets - 1, as uniform_from_word, in index order.
template <int kSets>
inline void philox_uniform_avx512(uint64_t seed, uint64_t offset, uint64_t first_group,
                                  float* uniform) {
  // Chain c holds groups first_group + 8c .. 8c + 7, one per 64-bit lane: counter words 2 and 3
  // are the low and high halves of the 64-bit group index.
  constexpr int kChains = 2 * kSets;
  __m512i w[kChains][4];
  const __m512i first = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(first_group)),
                                         _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  for (int c = 0; c < kChains; ++c) {
    const __m512i index = _mm512_add_epi64(first, _mm512_set1_epi64(8 * c));
    w[c][0] = _mm512_set1_epi64(static_cast<long long>(static_cast<uint32_t>(offset)));
    w[c][1] = _mm512_set1_epi64(static_cast<long long>(offset >> 32));
    w[c][2] = index;
    w[c][3] = _mm512_srli_epi64(index, 32);
  }
  const __m512i multiplier0 = _mm512_set1_epi64(kPhiloxMultiplier0);
  const __m512i multiplier1 = _mm512_set1_epi64(kPhiloxMultiplier1);
  uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m512i k0 = _mm512_set1_epi32(static_cast<int>(key0));
    const __m512i k1 = _mm512_set1_epi32(static_cast<int>(key1));
    // Independent chains side by side, so one's multiply latency hides behind the others.
    for (int c = 0; c < kChains; ++c) {
      philox_round_avx512(w[c][0], w[c][1], w[c][2], w[c][3], multiplier0, multiplier1, k0, k1);
    }
    key0 += kPhiloxWeyl0;
    key1 += kPhiloxWeyl1;
  }
  // Each word's 16 groups in order in one register: the low halves of two chains' lanes.
  const __m512i low_halves =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int set = 0; set < kSets; ++set) {
    const auto& a = w[2 * set];
    const auto& b = w[2 * set + 1];
    store_uniform_64_avx512(_mm512_permutex2var_epi32(a[0], low_halves, b[0]),
                            _mm512_permutex2var_epi32(a[1], low_halves, b[1]),
                            _mm512_permutex2var_epi32(a[2], low_halves, b[2]),
                            _mm512_permutex2var_epi32(a[3], low_halves, b[3]), uniform + 64 * set);
  }
}

inline void store_uniform_64_avx512(__m512i w0, __m512i w1, __m512i w2, __m512i w3,
                                    float* uniform) {
  // uniform_from_word: the top 24 bits (exact in float) times 2^-24.
  const __m512 scale = _mm512_set1_ps(1.0f / 16777216.0f);
  const __m512 f0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(w0, 8)), scale);
  const __m512 f1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(w1, 8)), scale);
  const __m512 f2 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(w2, 8)), scale);
  const __m512 f3 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(w3, 8)), scale);
  // Transpose to index order (value 4 * group + word): first each 128-bit lane L gathers
  // groups 4L .. 4L+3 (a: group 4L, b: 4L+1, c: 4L+2, d: 4L+3), then lanes are regrouped.
  const __m512 t0 = _mm512_unpacklo_ps(f0, f1), t1 = _mm512_unpackhi_ps(f0, f1);
  const __m512 t2 = _mm512_unpacklo_ps(f2, f3), t3 = _mm512_unpackhi_ps(f2, f3);
  const __m512 a = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
  const __m512 b = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
  const __m512 c = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
  const __m512 d = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
  const __m512 ab_low = _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512 cd_low = _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512 ab_high = _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2));
  const __m512 cd_high = _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2));
  _mm512_storeu_ps(uniform, _mm512_shuffle_f32x4(ab_low, cd_low, _MM_SHUFFLE(2, 0, 2, 0)));
  _mm512_storeu_ps(uniform + 16, _mm512_shuffle_f32x4(ab_low, cd_low, _MM_SHUFFLE(3, 1, 3, 1)));
  _mm512_storeu_ps(uniform + 32, _mm512_shuffle_f32x4(ab_high, cd_high, _MM_SHUFFLE(2, 0, 2, 0)));
  _mm512_storeu_ps(uniform + 48, _mm512_shuffle_f32x4(ab_high, cd_high, _MM_SHUFFLE(3, 1, 3, 1)));
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // __AVX512F__

#if defined(__AVX2__)

// hi and lo of a * multiplier for 8 unsigned 32-bit lanes.
inline __m256i philox_mulhilo_avx2(__m256i a, __m256i multiplier, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(a, multiplier);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), multiplier);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  return _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// Stores U of 8 groups, given their four words (group k in lane k), in index order.
inline void store_uniform_32_avx2(__m256i w0, __m256i w1, __m256i w2, __m256i w3,
                                  float* uniform);

// As philox_uniform_avx512, for groups first_group .. first_group + 8 * kSets - 1 (32 values
// per set), one group per 32-bit lane.
template <int kSets>
inline void philox_uniform_avx2(uint64_t seed, uint64_t offset, uint64_t first_group,
                                float* uniform) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i one = _mm256_set1_epi32(1);
  __m256i w[kSets][4];
  for (int set = 0; set < kSets; ++set) {
    const uint64_t set_first = first_group + 8 * static_cast<uint64_t>(set);
    const __m256i low = _mm256_add_epi32(
        _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(set_first))), lane);
    // low < lane (unsigned) where the low half wrapped: max_epu32(low, lane) != low.
    const __m256i not_wrapped = _mm256_cmpeq_epi32(_mm256_max_epu32(low, lane), low);
    const __m256i group_high =
        _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(set_first >> 32)));
    w[set][0] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
    w[set][1] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
    w[set][2] = low;
    w[set][3] =
        _mm256_sub_epi32(_mm256_add_epi32(group_high, one), _mm256_and_si256(not_wrapped, one));
  }
  const __m256i multiplier0 = _mm256_set1_epi32(static_cast<int>(kPhiloxMultiplier0));
  const __m256i multiplier1 = _mm256_set1_epi32(static_cast<int>(kPhiloxMultiplier1));
  uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m256i k0 = _mm256_set1_epi32(static_cast<int>(key0));
    const __m256i k1 = _mm256_set1_epi32(static_cast<int>(key1));
    // Independent sets side by side, so one's multiply latency hides behind the other's.
    for (int set = 0; set < kSets; ++set) {
      __m256i lo0, lo1;
      const __m256i hi0 = philox_mulhilo_avx2(w[set][0], multiplier0, &lo0);
      const __m256i hi1 = philox_mulhilo_avx2(w[set][2], multiplier1, &lo1);
      w[set][0] = _mm256_xor_si256(_mm256_xor_si256(hi1, w[set][1]), k0);
      w[set][1] = lo1;
      w[set][2] = _mm256_xor_si256(_mm256_xor_si256(hi0, w[set][3]), k1);
      w[set][3] = lo0;
    }
    key0 += kPhiloxWeyl0;
    key1 += kPhiloxWeyl1;
  }
  for (int set = 0; set < kSets; ++set) {
    store_uniform_32_avx2(w[set][0], w[set][1], w[set][2], w[set][3], uniform + 32 * set);
  }
}

inline void store_uniform_32_avx2(__m256i w0, __m256i w1, __m256i w2, __m256i w3,
                                  float* uniform) {
  const __m256 scale = _mm256_set1_ps(1.0f / 16777216.0f);
  const __m256 f0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w0, 8)), scale);
  const __m256 f1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w1, 8)), scale);
  const __m256 f2 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w2, 8)), scale);
  const __m256 f3 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w3, 8)), scale);
  // As the AVX-512 transpose: 128-bit lane L of a, b, c, d holds groups 4L, 4L+1, 4L+2, 4L+3.
  const __m256 t0 = _mm256_unpacklo_ps(f0, f1), t1 = _mm256_unpackhi_ps(f0, f1);
  const __m256 t2 = _mm256_unpacklo_ps(f2, f3), t3 = _mm256_unpackhi_ps(f2, f3);
  const __m256 a = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
  const __m256 b = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
  const __m256 c = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
  const __m256 d = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
  _mm256_storeu_ps(uniform, _mm256_permute2f128_ps(a, b, 0x20));
  _mm256_storeu_ps(uniform + 8, _mm256_permute2f128_ps(c, d, 0x20));
  _mm256_storeu_ps(uniform + 16, _mm256_permute2f128_ps(a, b, 0x31));
  _mm256_storeu_ps(uniform + 24, _mm256_permute2f128_ps(c, d, 0x31));
}

#endif  // __AVX2__

}  // namespace detail
}  // namespace graddrop
