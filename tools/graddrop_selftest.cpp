// graddrop_selftest: checks graddrop's kernels on this machine (every CPU instruction set, and
// on every visible GPU the CUDA kernels against the CPU kernels) and prints a report to paste
// into a bug report. Exit status 0 only when every check passes. docs/gpu.md.
//   graddrop_selftest [--no-bandwidth] [--perturb]
#include <cstring>
#include <iostream>

#include "graddrop/selftest.h"

int main(int argc, char** argv) {
  graddrop::SelfTestOptions options;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no-bandwidth") == 0) {
      options.bandwidth = false;
    } else if (std::strcmp(argv[i], "--perturb") == 0) {
      options.perturb = true;
    } else {
      std::cerr << "usage: graddrop_selftest [--no-bandwidth] [--perturb]\n"
                << "  --no-bandwidth  skip the short bandwidth check on each GPU\n"
                << "  --perturb       flip a bit of every output under test (the report must "
                   "then show failures: proves the checks can fail)\n";
      return 2;
    }
  }
  const auto result = graddrop::run_selftest(options);
  std::cout << result.report;
  return result.passed ? 0 : 1;
}
