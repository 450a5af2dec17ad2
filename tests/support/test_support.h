#pragma once
// Shared helpers of the test suites: fresh random inputs with a printed seed, U kept away from
// f(P) so float and float64 agree on every mask, and dtype-aware comparisons.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include "graddrop/compat.h"
#include "graddrop/options.h"
#include "graddrop/reference.h"
#include "graddrop/statistics.h"

namespace graddrop {
namespace testing {

// The seed of this test process: GRADDROP_TEST_SEED if set, else drawn from the clock; printed
// once so a failure can be replayed.
uint64_t test_seed();

// A generator seeded from test_seed() and `salt` (different per test); the seed is printed
// with the test's name.
at::Generator seeded_generator(uint64_t salt);

// n task gradients of the activation's shape and dtype, standard normal, some undefined when
// `undefined_every` > 0 (every k-th task), drawn from `generator`.
std::vector<at::Tensor> random_grads(const at::Tensor& activation, int64_t num_tasks,
                                     at::Generator& generator, int64_t undefined_every = 0);

// An activation of `sizes` and `dtype` with some exact zeros (so sign(A) = 0 is exercised).
at::Tensor random_activation(at::IntArrayRef sizes, at::ScalarType dtype,
                             at::Generator& generator);

// Per-task leaks mixed in [0, 1], including 0 and 1 when n allows.
std::vector<double> mixed_leaks(int64_t num_tasks, at::Generator& generator);

// In marginalised mode, `grads` with every column signal G_i at least `margin` times the sum of
// its terms' magnitudes away from zero, so that a float kernel's column sum has the float64
// reference's sign (a sum within rounding of zero could go either way). In each undecided
// column the term of largest magnitude is tripled or negated, whichever pushes the sum away
// from zero. Per-element mode: the grads as they are (a product's sign is exact).
std::vector<at::Tensor> decided_signals(std::vector<at::Tensor> grads, const at::Tensor& activation,
                                        const GradDropOptions& options, double margin = 1e-4);

// U of the purity's shape, drawn fresh, then moved at least `margin` away from the float64
// reference's f(P) so that an op-math float kernel decides every mask as float64 does. Values
// stay in [0, 1).
at::Tensor separated_uniform(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
                             const GradDropOptions& options, at::Generator& generator,
                             double margin = 1e-3);

// Tolerances for comparing a kernel output of `dtype` with the float64 reference.
double relative_tolerance(at::ScalarType dtype);
double absolute_tolerance(at::ScalarType dtype);

// Asserts `actual` (any dtype) equals `expected` (float64) within the dtype's tolerances,
// NaN matching NaN; on failure prints the worst element.
::testing::AssertionResult close_to_reference(const at::Tensor& actual, const at::Tensor& expected);

// A non-contiguous tensor with the same values as `tensor` (a transposed copy, transposed back,
// or every other element of a longer buffer); non-contiguous whenever it has 2+ elements.
at::Tensor non_contiguous_copy(const at::Tensor& tensor);

std::string describe(const GradDropOptions& options);

// Succeeds when `statement` throws a c10::Error whose message contains every string of
// `parts`; the failure message shows what was thrown (or that nothing was).
::testing::AssertionResult throws_error_containing(const std::function<void()>& statement,
                                                   const std::vector<std::string>& parts);

// Succeeds when both tensors have the same dtype, shape and bytes (NaN payloads included).
::testing::AssertionResult bitwise_equal(const at::Tensor& actual, const at::Tensor& expected);

// U of `shape` as the kernels draw it for an explicit (seed, offset): element k (flat index)
// is detail::philox_uniform(seed, offset, k). float32, exact.
at::Tensor philox_uniform_tensor(at::IntArrayRef shape, uint64_t seed, uint64_t offset);

// The statistics docs/options.md describes, counted from a float64 reference result's signals,
// purity and masks.
GradDropStatistics statistics_of_reference(const reference::ReferenceResult& result);

// Compares statistics field by field; `purity_tolerance` bounds |mean purity| error.
::testing::AssertionResult statistics_equal(const GradDropStatistics& actual,
                                            const GradDropStatistics& expected,
                                            double purity_tolerance);

// Collects the warnings issued on this thread while alive (TORCH_WARN goes to the current
// c10 warning handler; its interface differs between LibTorch 1.13 and 2.x).
class WarningCapture {
 public:
  WarningCapture();
  ~WarningCapture();
  WarningCapture(const WarningCapture&) = delete;
  WarningCapture& operator=(const WarningCapture&) = delete;

  const std::vector<std::string>& messages() const;
  // How many captured warnings contain `text`.
  int64_t count_containing(const std::string& text) const;

 private:
  struct Handler;
  Handler* handler_;
  c10::WarningHandler* previous_;
};

}  // namespace testing
}  // namespace graddrop
