// The main of every graddrop test program: prints the test seed and the thread count first.
#include <iostream>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "test_support.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  graddrop::testing::test_seed();
  std::cout << "[graddrop tests] " << at::get_parallel_info() << std::endl;
  return RUN_ALL_TESTS();
}
