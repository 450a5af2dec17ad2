// A first end-to-end check of combine against the float64 reference (the full matrix of options
// lives in combine_reference_test.cpp).
#include <gtest/gtest.h>

#include "graddrop/combine.h"
#include "test_support.h"

namespace graddrop {
namespace {

TEST(Smoke, MatchesReferenceBothModes) {
  auto generator = testing::seeded_generator(1);
  for (bool marginalize : {true, false}) {
    auto options = GradDropOptions(3).marginalize_batch(marginalize).leak({0.0, 0.3, 1.0});
    auto activation = testing::random_activation({16, 37}, at::kFloat, generator);
    auto grads = testing::random_grads(activation, 3, generator);
    auto uniform = testing::separated_uniform(grads, activation, options, generator);
    auto expected = reference::combine(grads, activation, options, uniform).output;
    auto actual = combine(grads, activation, options, nullopt, uniform);
    EXPECT_TRUE(testing::close_to_reference(actual, expected)) << "marginalize " << marginalize;
  }
}

}  // namespace
}  // namespace graddrop
