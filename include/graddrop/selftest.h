#pragma once
// graddrop's self-test and verify mode: what a user runs first on a new machine (docs/gpu.md).
#include <string>

namespace graddrop {

struct SelfTestOptions {
  /// Time the fused kernel against a same-footprint device copy and the composed formula on
  /// each GPU (a few seconds).
  bool bandwidth = true;
  /// Flip one bit of every output under test before it is compared: every comparison must then
  /// fail and report the element. Proves that the self-test can fail.
  bool perturb = false;
};

struct SelfTestResult {
  bool passed = true;
  int checks = 0;
  int failures = 0;
  int skipped = 0;
  /// The report to paste into a bug report: machine, build, each check with its verdict and the
  /// first differing element of a failure.
  std::string report;
};

/// Runs every check this build and machine allow: CPU instruction sets against each other, then
/// on every visible GPU the CUDA kernels against the CPU kernels bit for bit (both modes, four
/// dtypes, 1 to 40 tasks, odd feature counts, each launch path the planner chooses on that
/// GPU), statistics and keep_grad_norm within their tolerance, a side stream, a CUDA graph
/// replay, and a short bandwidth check. Without a GPU the GPU checks are reported as skipped.
/// Changes the process's CPU instruction set while it runs (restored after): run it alone.
SelfTestResult run_selftest(const SelfTestOptions& options = SelfTestOptions());

/// Verify mode: the first call of each configuration (device, dtype, shape, tasks, options) on
/// a GPU also runs the CPU kernel on copies with the same key and compares bit for bit (within
/// the documented tolerance for statistics and keep_grad_norm); a mismatch is a c10::Error
/// naming the configuration and the first differing element, and the inputs are saved to a
/// file the message names. Off by default; GRADDROP_VERIFY=1 turns it on at start.
void set_verify(bool enabled);
bool verify_enabled();

}  // namespace graddrop
