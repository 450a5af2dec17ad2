#pragma once
// The demo's command line: --name=value flags with defaults sized for a run of a few minutes on
// two CPU cores.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "graddrop/options.h"

namespace fashion {

/// A flag that is unknown or whose value does not parse; the message says which and why.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct DemoSettings {
  int64_t epochs = 6;
  int64_t batch_size = 128;
  double learning_rate = 1e-3;
  std::string optimizer = "adam";
  int64_t train_size = 60000;
  int64_t test_size = 10000;
  std::vector<uint64_t> seeds = {0};
  uint64_t pair_seed = 2020;
  std::string device = "cpu";
  int threads = 1;
  int64_t canvas = 28;
  std::string data_dir;  // empty: Debian's location
  std::string out_dir = "out";
  bool plot = true;
  bool progress_bar = true;  // only ever drawn when stdout is a terminal
  graddrop::GradDropOptions graddrop = graddrop::GradDropOptions(2);

  bool compare_step_time = false;
  int64_t timing_rounds = 10;
  int64_t timing_steps = 10;

  bool help = false;
};

/// Parses argv (without argv[0]). Throws UsageError.
DemoSettings parse_command_line(const std::vector<std::string>& arguments);

/// The --help text.
std::string usage(const std::string& program);

}  // namespace fashion
