// The self-test and verify mode (graddrop/selftest.h): they pass on this machine, and they fail
// when an output is wrong, naming the first differing element.
#include <fstream>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "graddrop/graddrop.h"
#include "graddrop/selftest.h"
#include "ops/validation.h"
#include "ops/verify.h"
#include "selftest/compare.h"
#include "test_support.h"

namespace graddrop {
namespace {

TEST(SelfTest, PassesHereAndSaysWhatItSkipped) {
  SelfTestOptions options;
  options.bandwidth = false;
  const auto result = run_selftest(options);
  EXPECT_TRUE(result.passed) << result.report;
  EXPECT_GT(result.checks, 40);
  EXPECT_EQ(result.failures, 0);
  EXPECT_NE(result.report.find("PASSED"), std::string::npos);
  if (!torch::cuda::is_available()) {
    EXPECT_NE(result.report.find("skip  GPU checks"), std::string::npos) << result.report;
  }
}

TEST(SelfTest, APerturbedOutputIsReportedWithItsElement) {
  SelfTestOptions options;
  options.bandwidth = false;
  options.perturb = true;
  const auto result = run_selftest(options);
  EXPECT_FALSE(result.passed);
  EXPECT_GT(result.failures, 0);
  EXPECT_NE(result.report.find("FAIL  "), std::string::npos);
  EXPECT_NE(result.report.find("element 0 of"), std::string::npos) << result.report;
  EXPECT_NE(result.report.find("FAILED"), std::string::npos);
}

TEST(SelfTest, ComparisonsNameTheFirstDifference) {
  const auto expected = at::arange(12, at::kFloat).reshape({3, 4});
  auto actual = expected.clone();
  EXPECT_FALSE(selftest::first_bitwise_difference(expected, actual).has_value());
  actual[2][1] = 9.5f;
  const auto difference = selftest::first_bitwise_difference(expected, actual);
  ASSERT_TRUE(difference.has_value());
  EXPECT_NE(difference->find("element 9 of [3, 4] (index [2, 1])"), std::string::npos)
      << *difference;
  EXPECT_NE(difference->find("(9.5)"), std::string::npos) << *difference;
  // NaN equals NaN bit for bit, and within a tolerance.
  auto with_nan = expected.clone();
  with_nan[0][0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(selftest::first_bitwise_difference(with_nan, with_nan.clone()).has_value());
  EXPECT_FALSE(selftest::first_difference_beyond(with_nan, with_nan.clone(), 1e-6).has_value());
  EXPECT_TRUE(selftest::first_difference_beyond(expected, actual, 1e-6).has_value());
  EXPECT_FALSE(selftest::first_difference_beyond(expected, expected * (1 + 1e-7), 1e-6)
                   .has_value());
}

TEST(Verify, OffByDefaultAndSwitchable) {
  EXPECT_FALSE(verify_enabled());  // GRADDROP_VERIFY is not set for the suites
  set_verify(true);
  EXPECT_TRUE(verify_enabled());
  set_verify(false);
  EXPECT_FALSE(verify_enabled());
}

// Verify mode's comparison, given a device result that differs from the CPU's: refused, naming
// the configuration and the element, with the inputs saved to a file that exists.
TEST(Verify, AMismatchIsRefusedWithTheElementAndTheInputsSaved) {
  auto generator = testing::seeded_generator(901);
  const auto activation = testing::random_activation({8, 6}, at::kFloat, generator);
  const auto grads = testing::random_grads(activation, 2, generator);
  c10::List<optional<at::Tensor>> list;
  for (const auto& grad : grads) list.push_back(grad);
  const optional<at::Tensor> none;
  auto arguments = ops::validate_combine({activation, list, {}, "activation_sign", true,
                                          "linear", 1.0, "drop", 1e-7, false, none, none,
                                          int64_t{42}, 0, false});
  const auto right = combine(grads, activation, GradDropOptions(2).seed(42));
  ops::compare_with_cpu(arguments, right, at::empty({0}, at::kDouble));  // agrees: no throw
  auto wrong = right.clone();
  wrong[3][4] = wrong[3][4].item<float>() + 1.0f;
  try {
    ops::compare_with_cpu(arguments, wrong, at::empty({0}, at::kDouble));
    ADD_FAILURE() << "a differing output was accepted";
  } catch (const c10::Error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("disagree on the output"), std::string::npos) << message;
    EXPECT_NE(message.find("element 22 of [8, 6] (index [3, 4])"), std::string::npos) << message;
    EXPECT_NE(message.find("2 tasks"), std::string::npos) << message;
    const auto begin = message.find("saved in ") + 9;
    const auto path = message.substr(begin, message.find(".pt", begin) + 3 - begin);
    EXPECT_TRUE(std::ifstream(path).good()) << path;
    std::remove(path.c_str());
  }
}

}  // namespace
}  // namespace graddrop
