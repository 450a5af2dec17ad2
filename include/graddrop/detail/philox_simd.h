#pragma once
// Philox-4x32-10 of philox.h for many groups at once, in x86 vector registers (CPU kernels
// only): one lane per group, so a register of 16 (AVX-512) or 8 (AVX2) lanes runs that many
// groups side by side. The same rounds, constants and counter layout as philox4x32_10 and
// philox_group, and the same word-to-float conversion as uniform_from_word, so the values are
// bit-identical to the scalar ones (tests/cpu/cpu_kernel_test.cpp checks it for every
// instruction set). Compilers widen the 32x32->64-bit multiply of the scalar code to 64-bit
// lanes and back; here the high and low halves come from two even/odd multiplies, about four
// times fewer instructions per draw.
//
// Defined only where the translation unit is compiled for the instruction set (__AVX512F__,
// __AVX2__); the baseline kernels use philox_group.
#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "graddrop/detail/philox.h"

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

// hi and lo of a * multiplier for 16 unsigned 32-bit lanes.
inline __m512i philox_mulhilo_avx512(__m512i a, __m512i multiplier, __m512i* lo) {
  const __m512i even = _mm512_mul_epu32(a, multiplier);  // lanes 0, 2, ...: 64-bit products
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), multiplier);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  return _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

// U of logical indices [4 * first_group, 4 * first_group + 64): the four words of groups
// first_group .. first_group + 15, as uniform_from_word, in index order.
inline void philox_uniform_64_avx512(uint64_t seed, uint64_t offset, uint64_t first_group,
                                     float* uniform) {
  // Counter words 2 and 3: the low and high halves of each lane's group index (the high half
  // steps where the low half wraps).
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i low = _mm512_add_epi32(
      _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first_group))), lane);
  const __mmask16 wrapped = _mm512_cmplt_epu32_mask(low, lane);
  const __m512i high = _mm512_mask_add_epi32(
      _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first_group >> 32))), wrapped,
      _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first_group >> 32))),
      _mm512_set1_epi32(1));
  __m512i w0 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
  __m512i w1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
  __m512i w2 = low;
  __m512i w3 = high;
  const __m512i multiplier0 = _mm512_set1_epi32(static_cast<int>(kPhiloxMultiplier0));
  const __m512i multiplier1 = _mm512_set1_epi32(static_cast<int>(kPhiloxMultiplier1));
  uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    __m512i lo0, lo1;
    const __m512i hi0 = philox_mulhilo_avx512(w0, multiplier0, &lo0);
    const __m512i hi1 = philox_mulhilo_avx512(w2, multiplier1, &lo1);
    w0 = _mm512_xor_si512(_mm512_xor_si512(hi1, w1), _mm512_set1_epi32(static_cast<int>(key0)));
    w1 = lo1;
    w2 = _mm512_xor_si512(_mm512_xor_si512(hi0, w3), _mm512_set1_epi32(static_cast<int>(key1)));
    w3 = lo0;
    key0 += kPhiloxWeyl0;
    key1 += kPhiloxWeyl1;
  }
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

// As philox_uniform_64_avx512, for groups first_group .. first_group + 7 (32 values).
inline void philox_uniform_32_avx2(uint64_t seed, uint64_t offset, uint64_t first_group,
                                   float* uniform) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i low = _mm256_add_epi32(
      _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(first_group))), lane);
  // low < lane (unsigned) where the low half wrapped: max_epu32(low, lane) != low.
  const __m256i not_wrapped = _mm256_cmpeq_epi32(_mm256_max_epu32(low, lane), low);
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i group_high =
      _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(first_group >> 32)));
  const __m256i high =
      _mm256_sub_epi32(_mm256_add_epi32(group_high, one), _mm256_and_si256(not_wrapped, one));
  __m256i w0 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
  __m256i w1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
  __m256i w2 = low;
  __m256i w3 = high;
  const __m256i multiplier0 = _mm256_set1_epi32(static_cast<int>(kPhiloxMultiplier0));
  const __m256i multiplier1 = _mm256_set1_epi32(static_cast<int>(kPhiloxMultiplier1));
  uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    __m256i lo0, lo1;
    const __m256i hi0 = philox_mulhilo_avx2(w0, multiplier0, &lo0);
    const __m256i hi1 = philox_mulhilo_avx2(w2, multiplier1, &lo1);
    w0 = _mm256_xor_si256(_mm256_xor_si256(hi1, w1), _mm256_set1_epi32(static_cast<int>(key0)));
    w1 = lo1;
    w2 = _mm256_xor_si256(_mm256_xor_si256(hi0, w3), _mm256_set1_epi32(static_cast<int>(key1)));
    w3 = lo0;
    key0 += kPhiloxWeyl0;
    key1 += kPhiloxWeyl1;
  }
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
