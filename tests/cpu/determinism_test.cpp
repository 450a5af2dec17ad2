// Randomness (docs/design.md): torch::manual_seed makes combine reproducible, an explicit
// generator is the one used, and results do not depend on the number of threads.
#include <string>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "graddrop/combine.h"
#include "test_support.h"

namespace graddrop {
namespace {

struct Inputs {
  at::Tensor activation;
  std::vector<at::Tensor> grads;
};

Inputs random_inputs(at::IntArrayRef shape, at::ScalarType dtype, int64_t n,
                     at::Generator& generator) {
  Inputs inputs;
  inputs.activation = testing::random_activation(shape, dtype, generator);
  inputs.grads = testing::random_grads(inputs.activation, n, generator);
  return inputs;
}

// Restores the thread count a test changed.
class ThreadCountGuard {
 public:
  ThreadCountGuard() : threads_(at::get_num_threads()) {}
  ~ThreadCountGuard() { at::set_num_threads(threads_); }

 private:
  int threads_;
};

TEST(Determinism, SameManualSeedSameOutput) {
  auto generator = testing::seeded_generator(401);
  const uint64_t seed = testing::test_seed() + 401;
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    for (bool marginalize : {true, false}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + (marginalize ? " marginalised" : ""));
      const auto in = random_inputs({16, 64}, dtype, 3, generator);
      const auto options = GradDropOptions(3).marginalize_batch(marginalize);
      torch::manual_seed(seed);
      const auto first = combine(in.grads, in.activation, options);
      const auto next = combine(in.grads, in.activation, options);
      torch::manual_seed(seed);
      const auto again = combine(in.grads, in.activation, options);
      torch::manual_seed(seed + 1);
      const auto other_seed = combine(in.grads, in.activation, options);
      EXPECT_TRUE(testing::bitwise_equal(again, first));
      // The generator advanced: the next call drew another U; another seed, another U.
      EXPECT_FALSE(at::equal(next, first));
      EXPECT_FALSE(at::equal(other_seed, first));
    }
  }
}

// Large enough for the CPU kernel to split the work across threads (per element: 16384
// elements per tile; marginalised: 256 columns and 64 rows per tile), with statistics and
// keep_grad_norm (which reduce across tiles) on.
TEST(Determinism, BitIdenticalAcrossThreadCounts) {
  ThreadCountGuard restore;
  auto generator = testing::seeded_generator(402);
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kDouble}) {
    for (bool marginalize : {true, false}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + (marginalize ? " marginalised" : ""));
      const auto in = random_inputs({300, 1000}, dtype, 3, generator);
      const auto options = GradDropOptions(3)
                               .marginalize_batch(marginalize)
                               .leak({0, 0.3, 0})
                               .keep_grad_norm(true)
                               .seed(testing::test_seed());
      std::vector<at::Tensor> outputs;
      std::vector<GradDropStatistics> statistics(2);
      for (int threads : {1, 2}) {
        at::set_num_threads(threads);
        ASSERT_EQ(at::get_num_threads(), threads);
        outputs.push_back(combine(in.grads, in.activation, options, nullopt, nullopt,
                                  &statistics[outputs.size()]));
      }
      EXPECT_TRUE(testing::bitwise_equal(outputs[1], outputs[0]));
      EXPECT_TRUE(testing::statistics_equal(statistics[1], statistics[0], 0.0));
      EXPECT_EQ(statistics[1].mean_purity, statistics[0].mean_purity);
    }
  }
}

// The default-generator path with two threads too: the seed comes from the generator, U from
// the logical index.
TEST(Determinism, DefaultGeneratorAcrossThreadCounts) {
  ThreadCountGuard restore;
  auto generator = testing::seeded_generator(403);
  const uint64_t seed = testing::test_seed() + 403;
  const auto in = random_inputs({600, 500}, at::kFloat, 2, generator);
  for (bool marginalize : {true, false}) {
    const auto options = GradDropOptions(2).marginalize_batch(marginalize);
    at::set_num_threads(1);
    torch::manual_seed(seed);
    const auto one = combine(in.grads, in.activation, options);
    at::set_num_threads(2);
    torch::manual_seed(seed);
    const auto two = combine(in.grads, in.activation, options);
    EXPECT_TRUE(testing::bitwise_equal(two, one));
  }
}

// The state of a CPU generator, to see whether a call drew from it.
at::Tensor state_of(const at::Generator& generator) { return generator.get_state(); }

TEST(Determinism, ExplicitGeneratorIsUsed) {
  auto generator = testing::seeded_generator(404);
  const uint64_t seed = testing::test_seed() + 404;
  const auto in = random_inputs({8, 40}, at::kFloat, 3, generator);
  for (bool marginalize : {true, false}) {
    const auto options = GradDropOptions(3).marginalize_batch(marginalize);
    auto first_generator = at::detail::createCPUGenerator(seed);
    auto second_generator = at::detail::createCPUGenerator(seed);
    const auto default_before = state_of(at::detail::getDefaultCPUGenerator());
    const auto first = combine(in.grads, in.activation, options, first_generator);
    const auto second = combine(in.grads, in.activation, options, second_generator);
    EXPECT_TRUE(testing::bitwise_equal(first, second));
    EXPECT_TRUE(at::equal(state_of(at::detail::getDefaultCPUGenerator()), default_before))
        << "the default generator advanced";
    // The given generator did advance: its next call draws another U, the same in both.
    const auto first_next = combine(in.grads, in.activation, options, first_generator);
    EXPECT_FALSE(at::equal(first_next, first));
    EXPECT_TRUE(testing::bitwise_equal(combine(in.grads, in.activation, options, second_generator),
                                       first_next));
    // Without a generator the default one is used, and advances.
    combine(in.grads, in.activation, options);
    EXPECT_FALSE(at::equal(state_of(at::detail::getDefaultCPUGenerator()), default_before));
  }
}

// An explicit seed or an explicit U draws nothing from any generator.
TEST(Determinism, ExplicitSeedOrUniformLeavesGeneratorsAlone) {
  auto generator = testing::seeded_generator(405);
  const auto in = random_inputs({8, 40}, at::kFloat, 3, generator);
  auto given = at::detail::createCPUGenerator(testing::test_seed());
  for (bool marginalize : {true, false}) {
    const auto options = GradDropOptions(3).marginalize_batch(marginalize);
    const auto default_before = state_of(at::detail::getDefaultCPUGenerator());
    const auto given_before = state_of(given);
    const auto seeded = GradDropOptions(options).seed(31).offset(2);
    const auto with_seed = combine(in.grads, in.activation, seeded);
    EXPECT_TRUE(testing::bitwise_equal(combine(in.grads, in.activation, seeded, given), with_seed));
    const auto uniform = at::rand(purity_shape(in.activation, options), generator);
    combine(in.grads, in.activation, options, nullopt, uniform);
    combine(in.grads, in.activation, options, given, uniform);
    EXPECT_TRUE(at::equal(state_of(at::detail::getDefaultCPUGenerator()), default_before));
    EXPECT_TRUE(at::equal(state_of(given), given_before));
  }
}

}  // namespace
}  // namespace graddrop
