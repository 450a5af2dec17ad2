#pragma once
// The test-accuracy plot: a gnuplot script and its data, run with Debian's gnuplot-nox.
#include <cstdint>
#include <string>

namespace fashion {

/// Writes `script_path` plotting test accuracy per task over epochs from the two curve files
/// (see write_accuracy_curve) into `png_path`; `error_bars` when the curves average several
/// seeds; `epochs` sets the x ticks. The script picks the pngcairo terminal when gnuplot has it, else png.
void write_gnuplot_script(const std::string& script_path, const std::string& png_path,
                          const std::string& equal_weight_curve, const std::string& graddrop_curve,
                          bool error_bars, int64_t epochs);

enum class PlotStatus { kWritten, kGnuplotMissing, kGnuplotFailed };

/// Runs `gnuplot script_path` and waits for it.
PlotStatus run_gnuplot(const std::string& script_path);

}  // namespace fashion
