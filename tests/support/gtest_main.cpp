// The main of every graddrop test program: prints the test seed and the thread count first.
//
// When tests ran and every one of them skipped itself (the GPU suites on a machine without a
// GPU), the program says so and exits with kAllSkippedExitCode, which CTest reports as "Skipped"
// (SKIP_RETURN_CODE in tests/CMakeLists.txt) rather than as a pass. A failure, or any test that
// ran to the end, keeps GoogleTest's own exit status.
#include <iostream>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "test_support.h"

namespace {
constexpr int kAllSkippedExitCode = 77;
}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  graddrop::testing::test_seed();
  std::cout << "[graddrop tests] " << at::get_parallel_info() << std::endl;
  const int status = RUN_ALL_TESTS();
  const auto* unit = ::testing::UnitTest::GetInstance();
  if (status == 0 && unit->test_to_run_count() > 0 &&
      unit->skipped_test_count() == unit->test_to_run_count()) {
    std::cout << "[graddrop tests] every test skipped itself (" << unit->skipped_test_count()
              << "): exit status " << kAllSkippedExitCode << " (CTest: Skipped)" << std::endl;
    return kAllSkippedExitCode;
  }
  return status;
}
