#include "fashion/plot.h"

#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>
#include <fstream>
#include <stdexcept>
#include <vector>

extern char** environ;

namespace fashion {
namespace {

// gnuplot strings in single quotes take everything literally except the quote itself.
std::string quoted(const std::string& text) {
  std::string result = "'";
  for (char c : text) {
    if (c == '\'') {
      result += "''";
    } else {
      result += c;
    }
  }
  return result + "'";
}

}  // namespace

void write_gnuplot_script(const std::string& script_path, const std::string& png_path,
                          const std::string& equal_weight_curve, const std::string& graddrop_curve,
                          bool error_bars, int64_t epochs) {
  std::ofstream script(script_path);
  if (!script) throw std::runtime_error("cannot write " + script_path);
  const std::string style = error_bars ? "yerrorlines" : "linespoints";
  const std::string task1 = error_bars ? "1:2:3" : "1:2";
  const std::string task2 = error_bars ? "1:4:5" : "1:4";
  script << "# Test accuracy per task over epochs, equal weights vs GradDrop (multitask_fashion)\n"
         << "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
         << "  set terminal pngcairo size 960,600 enhanced font 'sans,11'\n"
         << "} else {\n"
         << "  set terminal png size 960,600\n"
         << "}\n"
         << "set output " << quoted(png_path) << "\n"
         << "set title 'Multi-Fashion, multitask LeNet: test accuracy per task'\n"
         << "set xlabel 'epoch'\n"
         << "set ylabel 'test accuracy (%)'\n"
         << "set key bottom right\n"
         << "set grid\n"
         << (epochs <= 20 ? "set xtics 1\n" : "set format x '%.0f'\n")
         // Half an epoch of room at both ends: the end points and their error bars show whole.
         << "set xrange [0.5:" << epochs << ".5]\n"
         << "set style line 1 lc rgb '#1f77b4' lw 2 pt 7 dt 1\n"
         << "set style line 2 lc rgb '#1f77b4' lw 2 pt 5 dt 2\n"
         << "set style line 3 lc rgb '#d62728' lw 2 pt 7 dt 1\n"
         << "set style line 4 lc rgb '#d62728' lw 2 pt 5 dt 2\n"
         << "plot " << quoted(equal_weight_curve) << " using " << task1 << " with " << style
         << " ls 1 title 'equal weight, task 1', \\\n"
         << "     " << quoted(equal_weight_curve) << " using " << task2 << " with " << style
         << " ls 2 title 'equal weight, task 2', \\\n"
         << "     " << quoted(graddrop_curve) << " using " << task1 << " with " << style
         << " ls 3 title 'GradDrop, task 1', \\\n"
         << "     " << quoted(graddrop_curve) << " using " << task2 << " with " << style
         << " ls 4 title 'GradDrop, task 2'\n";
  if (!script.flush()) throw std::runtime_error("cannot write " + script_path);
}

PlotStatus run_gnuplot(const std::string& script_path) {
  std::vector<char*> argv = {const_cast<char*>("gnuplot"), const_cast<char*>(script_path.c_str()),
                             nullptr};
  pid_t pid = 0;
  const int error = posix_spawnp(&pid, "gnuplot", nullptr, nullptr, argv.data(), environ);
  if (error == ENOENT) return PlotStatus::kGnuplotMissing;
  if (error != 0) return PlotStatus::kGnuplotFailed;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return PlotStatus::kGnuplotFailed;
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? PlotStatus::kWritten
                                                       : PlotStatus::kGnuplotFailed;
}

}  // namespace fashion
