// Pinned output digests: combine's bytes for fixed inputs and a fixed (seed, offset), recorded
// once and compared on every build (any instruction set, thread count, LibTorch). A change that
// moves a single bit of any output, statistic or norm fails here; a refactor must keep them.
//
// The inputs come from an integer hash (src/selftest/hashed_inputs.h), not from a torch
// generator, so they are the same bytes in every LibTorch release. Set GRADDROP_PRINT_DIGESTS=1
// to print the digests a build computes.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "graddrop/combine.h"
#include "selftest/hashed_inputs.h"

namespace graddrop {
namespace {

// FNV-1a over the bytes of a contiguous CPU tensor.
uint64_t digest_of(const at::Tensor& tensor) {
  const auto bytes = tensor.contiguous();
  const auto* data = static_cast<const unsigned char*>(bytes.data_ptr());
  uint64_t hash = 0xcbf29ce484222325ull;
  for (int64_t i = 0; i < bytes.numel() * static_cast<int64_t>(bytes.element_size()); ++i) {
    hash = (hash ^ data[i]) * 0x100000001b3ull;
  }
  return hash;
}

uint64_t digest_of(const GradDropStatistics& statistics) {
  std::vector<double> values = statistics.kept_fraction;
  values.push_back(statistics.mean_purity);
  values.push_back(statistics.conflict_fraction);
  return digest_of(at::tensor(values, at::kDouble));
}

struct DigestCase {
  const char* name;
  std::vector<int64_t> sizes;
  at::ScalarType dtype;
  int64_t num_tasks;
  bool marginalize;
  bool keep_grad_norm;
  bool statistics;
  uint64_t output_digest;
  uint64_t statistics_digest;  // 0 without statistics
  bool mixed_leaks = false;     // leak 0, 0.25, 0.5, 0.75 in turn
};

GradDropOptions options_of(const DigestCase& c) {
  auto options = GradDropOptions(c.num_tasks)
                     .marginalize_batch(c.marginalize)
                     .keep_grad_norm(c.keep_grad_norm)
                     .seed(20261206)
                     .offset(3);
  if (c.num_tasks == 3) options.leak({0.0, 0.25, 1.0});
  if (c.num_tasks == 8) options.keep_function(KeepFunction::kSigmoid).scale(1.5);
  if (c.num_tasks == 2 && !c.marginalize) options.zero_sign(ZeroSign::kKeep);
  if (c.dtype == at::kDouble) options.sign_source(SignSource::kActivationValue);
  if (c.mixed_leaks) {
    std::vector<double> leak;
    for (int64_t task = 0; task < c.num_tasks; ++task) leak.push_back(0.25 * (task % 4));
    options.leak(leak);
  }
  return options;
}

// Recorded with the build of commit 3f94995 (before the one-entry refactor).
const std::vector<DigestCase>& digest_cases() {
  static const std::vector<DigestCase> cases = {
      {"f32_marginalised_n2", {96, 300}, at::kFloat, 2, true, false, false,
       0x50cdb843c4ca8e40ull, 0},
      {"f32_marginalised_n3_stats", {640, 130}, at::kFloat, 3, true, false, true,
       0x6ffe0c43a3b6f079ull, 0xdc6f21ce49a259caull},
      {"f32_marginalised_n8_norm", {33, 2050}, at::kFloat, 8, true, true, true,
       0x93af70ea87fa2717ull, 0x04556b6ca3691cdaull},
      {"f32_per_element_n2", {40000}, at::kFloat, 2, false, false, true,
       0x53fa0d2aa9e97d8eull, 0xb8011b2d111a6967ull},
      {"bf16_marginalised_n40", {64, 200}, at::kBFloat16, 40, true, false, true,
       0xa6731779bf367322ull, 0x5292a335e12fb789ull},
      {"f16_per_element_n3", {7, 9, 11}, at::kHalf, 3, false, true, false,
       0x9694c8ecb22a859bull, 0},
      {"f64_marginalised_n2", {128, 64}, at::kDouble, 2, true, true, true,
       0xa8da62278c86a5bdull, 0x5f3a7bd4a8648d7bull},
      {"f32_marginalised_n1", {513, 17}, at::kFloat, 1, true, false, true,
       0x5b5de25e6a9d9666ull, 0x786ee713e009d67full},
      // Many tasks (task groups of 8 and their remainders), recorded with the build of commit
      // 28ec19c (before the many-task kernel).
      {"f32_per_element_n13_stats", {20000}, at::kFloat, 13, false, false, true,
       0x6da7e057a3de2128ull, 0xc6cc6a4173ed7bc6ull, true},
      {"f32_per_element_n40_norm", {33000}, at::kFloat, 40, false, true, true,
       0x9a455da859c18281ull, 0x03118346197141c4ull, true},
      {"bf16_per_element_n64", {5000}, at::kBFloat16, 64, false, false, true,
       0x818669d97987b6ddull, 0xc19dd8fce7d64ac7ull, true},
      {"f32_marginalised_n17_norm", {1030, 90}, at::kFloat, 17, true, true, true,
       0x6b54fb9a4346ea7dull, 0xaa0c0545e2c4ba35ull, true},
      {"f32_marginalised_n64", {600, 70}, at::kFloat, 64, true, false, true,
       0xeee7aecf3d378a0bull, 0x7b5443825abb22a7ull, true},
      {"f16_marginalised_n9", {77, 45}, at::kHalf, 9, true, false, false,
       0x532e05f9166b7560ull, 0, true},
  };
  return cases;
}

struct Inputs {
  at::Tensor activation;
  std::vector<at::Tensor> grads;
};

Inputs inputs_of(const DigestCase& c) {
  Inputs inputs{selftest::hashed_tensor(c.sizes, c.dtype, 1), {}};
  for (int64_t task = 0; task < c.num_tasks; ++task) {
    inputs.grads.push_back(
        selftest::hashed_tensor(c.sizes, c.dtype, 100 + static_cast<uint64_t>(task)));
  }
  return inputs;
}

std::string hex(uint64_t value) {
  std::ostringstream text;
  text << "0x" << std::hex << std::setw(16) << std::setfill('0') << value << "ull";
  return text.str();
}

TEST(Digests, OutputsMatchThePinnedBytes) {
  const bool print = std::getenv("GRADDROP_PRINT_DIGESTS") != nullptr;
  for (const auto& c : digest_cases()) {
    SCOPED_TRACE(c.name);
    auto [activation, grads] = inputs_of(c);
    GradDropStatistics statistics;
    const auto output = combine(grads, activation, options_of(c), nullopt, nullopt,
                                c.statistics ? &statistics : nullptr);
    const uint64_t output_digest = digest_of(output);
    const uint64_t statistics_digest = c.statistics ? digest_of(statistics) : 0;
    if (print) {
      std::cout << "      {\"" << c.name << "\", ... " << hex(output_digest) << ", "
                << hex(statistics_digest) << "},\n";
    }
    EXPECT_EQ(hex(output_digest), hex(c.output_digest));
    EXPECT_EQ(hex(statistics_digest), hex(c.statistics_digest));
  }
}

// The same digests with one thread: the summation order does not depend on the thread count.
TEST(Digests, OneThreadGivesTheSameBytes) {
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  for (const auto& c : digest_cases()) {
    SCOPED_TRACE(c.name);
    auto [activation, grads] = inputs_of(c);
    EXPECT_EQ(hex(digest_of(combine(grads, activation, options_of(c)))), hex(c.output_digest));
  }
  at::set_num_threads(threads);
}

// combine_out, writing into a task gradient, gives the same bytes.
TEST(Digests, OutIntoATaskGradientGivesTheSameBytes) {
  for (const auto& c : digest_cases()) {
    SCOPED_TRACE(c.name);
    auto [activation, grads] = inputs_of(c);
    at::Tensor out = grads.back();
    combine_out(out, grads, activation, options_of(c));
    EXPECT_EQ(hex(digest_of(out)), hex(c.output_digest));
  }
}

}  // namespace
}  // namespace graddrop
