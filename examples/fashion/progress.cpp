#include "fashion/progress.h"

#include <unistd.h>

#include <cstdio>

namespace fashion {

ProgressBar::ProgressBar(bool wanted)
    : enabled_(wanted && isatty(STDOUT_FILENO)), run_started_(std::chrono::steady_clock::now()) {}

void ProgressBar::start(const std::string& label) {
  label_ = label;
  started_ = std::chrono::steady_clock::now();
  last_draw_ = {};
}

void ProgressBar::update(int64_t done, int64_t total, double run_fraction) {
  if (!enabled_ || total <= 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (done < total && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - started_).count();
  const double fraction = static_cast<double>(done) / static_cast<double>(total);
  const double eta = done > 0 ? elapsed * (1.0 / fraction - 1.0) : 0.0;
  const double run_elapsed = std::chrono::duration<double>(now - run_started_).count();
  const double run_eta = run_fraction > 0.0 ? run_elapsed * (1.0 / run_fraction - 1.0) : 0.0;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(fraction * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(kWidth - filled), '.');
  std::printf("\r\033[K%s [%s] %3d%% %lld/%lld  %.0fs, ETA %.0fs (whole run: %.0fs)",
              label_.c_str(), bar.c_str(), static_cast<int>(100.0 * fraction),
              static_cast<long long>(done), static_cast<long long>(total), elapsed, eta, run_eta);
  std::fflush(stdout);
}

void ProgressBar::clear() {
  if (!enabled_) return;
  std::printf("\r\033[K");
  std::fflush(stdout);
}

}  // namespace fashion
