#pragma once
// Shared helpers of the test suites: fresh random inputs with a printed seed, U kept away from
// f(P) so float and float64 agree on every mask, and dtype-aware comparisons.
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "graddrop/options.h"
#include "graddrop/reference.h"

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

// A non-contiguous tensor with the same values as `tensor` (a transposed copy, transposed back).
at::Tensor non_contiguous_copy(const at::Tensor& tensor);

std::string describe(const GradDropOptions& options);

}  // namespace testing
}  // namespace graddrop
