#include "selftest/compare.h"

#include <cstdint>
#include <cstring>
#include <iomanip>
#include <sstream>

#include <ATen/ATen.h>

namespace graddrop {
namespace selftest {
namespace {

std::string sizes_of(const at::Tensor& tensor) {
  std::ostringstream text;
  text << tensor.sizes();
  return text.str();
}

// The multi-index of flat element `flat` of `sizes`.
std::string index_of(int64_t flat, at::IntArrayRef sizes) {
  std::vector<int64_t> index(sizes.size());
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    index[static_cast<size_t>(d)] = sizes[static_cast<size_t>(d)] ? flat % sizes[d] : 0;
    flat = sizes[static_cast<size_t>(d)] ? flat / sizes[d] : 0;
  }
  std::ostringstream text;
  text << at::IntArrayRef(index);
  return text.str();
}

std::string element_text(const at::Tensor& flat, int64_t i) {
  const auto* bytes = static_cast<const unsigned char*>(flat.data_ptr()) + i * flat.element_size();
  uint64_t bits = 0;
  std::memcpy(&bits, bytes, static_cast<size_t>(flat.element_size()));
  std::ostringstream text;
  text << "0x" << std::hex << std::setw(static_cast<int>(2 * flat.element_size()))
       << std::setfill('0') << bits << std::dec << " ("
       << std::setprecision(9) << flat[i].item<double>() << ")";
  return text.str();
}

std::string describe(const at::Tensor& expected, const at::Tensor& actual, int64_t i) {
  const auto e = expected.reshape({-1});
  const auto a = actual.reshape({-1});
  std::ostringstream text;
  text << "element " << i << " of " << sizes_of(expected) << " (index "
       << index_of(i, expected.sizes()) << "): expected " << element_text(e, i) << ", got "
       << element_text(a, i);
  return text.str();
}

optional<std::string> shape_difference(const at::Tensor& expected, const at::Tensor& actual) {
  if (expected.scalar_type() != actual.scalar_type() || expected.sizes() != actual.sizes()) {
    std::ostringstream text;
    text << "expected " << expected.scalar_type() << sizes_of(expected) << ", got "
         << actual.scalar_type() << sizes_of(actual);
    return text.str();
  }
  return nullopt;
}

}  // namespace

optional<std::string> first_bitwise_difference(const at::Tensor& expected_in,
                                               const at::Tensor& actual_in) {
  if (auto difference = shape_difference(expected_in, actual_in)) return difference;
  const auto expected = expected_in.cpu().contiguous();
  const auto actual = actual_in.cpu().contiguous();
  const int64_t size = expected.element_size();
  const auto* e = static_cast<const unsigned char*>(expected.data_ptr());
  const auto* a = static_cast<const unsigned char*>(actual.data_ptr());
  if (std::memcmp(e, a, static_cast<size_t>(expected.numel() * size)) == 0) return nullopt;
  for (int64_t i = 0; i < expected.numel(); ++i) {
    if (std::memcmp(e + i * size, a + i * size, static_cast<size_t>(size)) != 0) {
      return describe(expected, actual, i);
    }
  }
  return nullopt;
}

optional<std::string> first_difference_beyond(const at::Tensor& expected_in,
                                              const at::Tensor& actual_in, double tolerance) {
  if (auto difference = shape_difference(expected_in, actual_in)) return difference;
  const auto expected = expected_in.cpu().to(at::kDouble).reshape({-1});
  const auto actual = actual_in.cpu().to(at::kDouble).reshape({-1});
  const auto both_nan = at::logical_and(expected.isnan(), actual.isnan());
  const auto within = (actual - expected).abs() <= tolerance * (1 + expected.abs());
  const auto bad = at::logical_not(at::logical_or(within, both_nan))
                       .logical_and(at::logical_not(actual.eq(expected)));  // equal infinities
  if (!bad.any().item<bool>()) return nullopt;
  const int64_t i = bad.nonzero()[0][0].item<int64_t>();
  return describe(expected_in.cpu().contiguous(), actual_in.cpu().contiguous(), i) +
         " (beyond the tolerance " + std::to_string(tolerance) + ")";
}

double order_tolerance(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble:
      return 1e-12;
    case at::kHalf:
      return 2e-3;  // one rounding of float16 more or less
    case at::kBFloat16:
      return 1.6e-2;  // one rounding of bfloat16
    default:
      return 1e-5;
  }
}

}  // namespace selftest
}  // namespace graddrop
