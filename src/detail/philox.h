#pragma once
// Counter-based Philox-4x32-10 (Salmon et al., SC'11), the generator behind PyTorch's and
// cuRAND's random kernels, written once for the CPU and CUDA kernels.
//
// GradDrop draws one uniform number per element of the purity tensor P. The number of logical
// index k depends only on (seed, offset, k): counter = (offset_lo, offset_hi, k/4 lo, k/4 hi),
// key = (seed_lo, seed_hi), word k % 4. So U never depends on thread count, grid or block shape.
#include <cstdint>

#include "detail/host_device.h"

namespace graddrop {
namespace detail {

struct PhiloxWords {
  uint32_t w[4];
};

GRADDROP_HOST_DEVICE uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

// Ten rounds of Philox-4x32 on `counter` with `key`; constants from the Random123 paper.
GRADDROP_HOST_DEVICE PhiloxWords philox4x32_10(PhiloxWords counter, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u;
  constexpr uint32_t kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u;
  constexpr uint32_t kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = philox_mulhilo(kMul0, counter.w[0], &hi0);
    const uint32_t lo1 = philox_mulhilo(kMul1, counter.w[2], &hi1);
    PhiloxWords next;
    next.w[0] = hi1 ^ counter.w[1] ^ key0;
    next.w[1] = lo1;
    next.w[2] = hi0 ^ counter.w[3] ^ key1;
    next.w[3] = lo0;
    counter = next;
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return counter;
}

// The four random words of Philox group `group` (logical indices 4*group .. 4*group+3).
GRADDROP_HOST_DEVICE PhiloxWords philox_group(uint64_t seed, uint64_t offset, uint64_t group) {
  PhiloxWords counter;
  counter.w[0] = static_cast<uint32_t>(offset);
  counter.w[1] = static_cast<uint32_t>(offset >> 32);
  counter.w[2] = static_cast<uint32_t>(group);
  counter.w[3] = static_cast<uint32_t>(group >> 32);
  return philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// A 32-bit word to a float in [0, 1): the top 24 bits times 2^-24. Exact in float and double
// (no rounding, no contraction), so both devices produce bit-identical U.
GRADDROP_HOST_DEVICE float uniform_from_word(uint32_t word) {
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
}

// U for one logical index k (slow path; kernels take a whole group at once).
GRADDROP_HOST_DEVICE float philox_uniform(uint64_t seed, uint64_t offset, uint64_t k) {
  const PhiloxWords words = philox_group(seed, offset, k / 4);
  return uniform_from_word(words.w[k % 4]);
}

}  // namespace detail
}  // namespace graddrop
