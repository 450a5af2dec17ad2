#pragma once
// Inputs made from an integer hash, not from a torch generator, so they are the same bytes on
// every machine and in every LibTorch release: the self-test and the pinned digests
// (tests/cpu/digest_test.cpp) use them.
#include <cstdint>

#include <ATen/ATen.h>

namespace graddrop {
namespace selftest {

// A value in [-1, 1) from (stream, index), with exact zeros every 29th index (sign(A) = 0 and
// zero signals are exercised).
inline double hashed_value(uint64_t stream, uint64_t index) {
  if (index % 29 == 7) return 0.0;
  uint64_t x = stream * 0x9E3779B97F4A7C15ull + index * 0xBF58476D1CE4E5B9ull + 1;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  return static_cast<double>(x >> 11) * 0x1.0p-52 - 1.0;
}

// A CPU tensor of `sizes` and `dtype` filled with hashed_value(stream, flat index).
inline at::Tensor hashed_tensor(at::IntArrayRef sizes, at::ScalarType dtype, uint64_t stream) {
  auto values = at::empty(sizes, at::kDouble);
  double* data = values.data_ptr<double>();
  for (int64_t i = 0; i < values.numel(); ++i) data[i] = hashed_value(stream, i);
  return values.to(dtype);
}

}  // namespace selftest
}  // namespace graddrop
