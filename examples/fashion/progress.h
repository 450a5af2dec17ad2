#pragma once
// A one-line progress bar with ETA, drawn only when stdout is a terminal (logs and CI get the
// per-epoch lines alone).
#include <chrono>
#include <cstdint>
#include <string>

namespace fashion {

class ProgressBar {
 public:
  /// Draws only when `wanted` and stdout is a terminal.
  explicit ProgressBar(bool wanted);

  /// Starts a new bar with `label` in front.
  void start(const std::string& label);

  /// Redraws (at most ~10 times a second) for `done` of `total` steps of this bar, with
  /// `run_fraction` of the whole run done (for the run's ETA; the clock starts at construction).
  void update(int64_t done, int64_t total, double run_fraction);

  /// Erases the bar so the next line prints over it.
  void clear();

 private:
  bool enabled_;
  std::string label_;
  std::chrono::steady_clock::time_point run_started_, started_, last_draw_;
};

}  // namespace fashion
