#include "fashion/command_line.h"

#include <functional>
#include <map>
#include <sstream>

#include <c10/util/Exception.h>

namespace fashion {
namespace {

int64_t parse_integer(const std::string& flag, const std::string& text, int64_t minimum) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) {
    throw UsageError("--" + flag + " needs an integer, got '" + text + "'");
  }
  if (value < minimum) {
    throw UsageError("--" + flag + " must be at least " + std::to_string(minimum) + ", got " +
                     text);
  }
  return value;
}

double parse_real(const std::string& flag, const std::string& text) {
  size_t used = 0;
  double value = 0.0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) {
    throw UsageError("--" + flag + " needs a number, got '" + text + "'");
  }
  return value;
}

bool parse_bool(const std::string& flag, const std::string& text) {
  if (text.empty() || text == "true" || text == "1" || text == "yes" || text == "on") return true;
  if (text == "false" || text == "0" || text == "no" || text == "off") return false;
  throw UsageError("--" + flag + " takes true or false, got '" + text + "'");
}

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, ',')) parts.push_back(part);
  return parts;
}

// The library's own parsers throw c10::Error with the accepted names; keep its message.
template <typename Parse>
auto parse_enum(const std::string& flag, const std::string& text, Parse parse) {
  try {
    return parse(text);
  } catch (const c10::Error& error) {
    throw UsageError("--" + flag + ": " + error.what_without_backtrace());
  }
}

}  // namespace

DemoSettings parse_command_line(const std::vector<std::string>& arguments) {
  DemoSettings settings;
  auto& gd = settings.graddrop;
  using Setter = std::function<void(const std::string& flag, const std::string& value)>;
  const std::map<std::string, Setter> setters = {
      {"epochs", [&](auto& f, auto& v) { settings.epochs = parse_integer(f, v, 1); }},
      {"batch-size", [&](auto& f, auto& v) { settings.batch_size = parse_integer(f, v, 1); }},
      {"lr", [&](auto& f, auto& v) { settings.learning_rate = parse_real(f, v); }},
      {"optimizer",
       [&](auto& f, auto& v) {
         if (v != "adam" && v != "sgd") {
           throw UsageError("--" + f + " must be adam or sgd, got '" + v + "'");
         }
         settings.optimizer = v;
       }},
      {"train-size", [&](auto& f, auto& v) { settings.train_size = parse_integer(f, v, 1); }},
      {"test-size", [&](auto& f, auto& v) { settings.test_size = parse_integer(f, v, 1); }},
      {"seeds",
       [&](auto& f, auto& v) {
         settings.seeds.clear();
         for (const auto& part : split_commas(v)) {
           settings.seeds.push_back(static_cast<uint64_t>(parse_integer(f, part, 0)));
         }
         if (settings.seeds.empty()) throw UsageError("--seeds needs at least one seed");
       }},
      {"pair-seed",
       [&](auto& f, auto& v) { settings.pair_seed = static_cast<uint64_t>(parse_integer(f, v, 0)); }},
      {"device",
       [&](auto& f, auto& v) {
         if (v != "cpu" && v != "cuda") {
           throw UsageError("--" + f + " must be cpu or cuda, got '" + v + "'");
         }
         settings.device = v;
       }},
      {"threads",
       [&](auto& f, auto& v) { settings.threads = static_cast<int>(parse_integer(f, v, 1)); }},
      {"canvas",
       [&](auto& f, auto& v) {
         settings.canvas = parse_integer(f, v, 1);
         if (settings.canvas != 28 && settings.canvas != 36) {
           throw UsageError("--" + f + " must be 28 (resized) or 36 (kept), got " + v);
         }
       }},
      {"data-dir", [&](auto&, auto& v) { settings.data_dir = v; }},
      {"out-dir", [&](auto&, auto& v) { settings.out_dir = v; }},
      {"no-plot", [&](auto& f, auto& v) { settings.plot = !parse_bool(f, v); }},
      {"no-progress", [&](auto& f, auto& v) { settings.progress_bar = !parse_bool(f, v); }},
      {"leak",
       [&](auto& f, auto& v) {
         std::vector<double> leak;
         for (const auto& part : split_commas(v)) leak.push_back(parse_real(f, part));
         if (leak.size() == 1) leak.push_back(leak[0]);
         gd.leak(leak);
       }},
      {"marginalize", [&](auto& f, auto& v) { gd.marginalize_batch(parse_bool(f, v)); }},
      {"keep-function",
       [&](auto& f, auto& v) {
         gd.keep_function(parse_enum(f, v, graddrop::keep_function_from_string));
         if (gd.keep_function() == graddrop::KeepFunction::kCustom) {
           throw UsageError("--keep-function must be linear or sigmoid");
         }
       }},
      {"scale", [&](auto& f, auto& v) { gd.scale(parse_real(f, v)); }},
      {"zero-sign",
       [&](auto& f, auto& v) { gd.zero_sign(parse_enum(f, v, graddrop::zero_sign_from_string)); }},
      {"sign-source",
       [&](auto& f, auto& v) {
         gd.sign_source(parse_enum(f, v, graddrop::sign_source_from_string));
       }},
      {"keep-grad-norm", [&](auto& f, auto& v) { gd.keep_grad_norm(parse_bool(f, v)); }},
      {"epsilon", [&](auto& f, auto& v) { gd.epsilon(parse_real(f, v)); }},
      {"compare-step-time",
       [&](auto& f, auto& v) { settings.compare_step_time = parse_bool(f, v); }},
      {"timing-rounds",
       [&](auto& f, auto& v) { settings.timing_rounds = parse_integer(f, v, 1); }},
      {"timing-steps", [&](auto& f, auto& v) { settings.timing_steps = parse_integer(f, v, 1); }},
      {"help", [&](auto& f, auto& v) { settings.help = parse_bool(f, v); }},
  };

  for (const auto& argument : arguments) {
    if (argument == "-h") {
      settings.help = true;
      continue;
    }
    if (argument.rfind("--", 0) != 0) {
      throw UsageError("unexpected argument '" + argument + "' (flags are --name=value)");
    }
    const auto equals = argument.find('=');
    const std::string name = argument.substr(2, equals == std::string::npos ? std::string::npos
                                                                              : equals - 2);
    const std::string value = equals == std::string::npos ? "" : argument.substr(equals + 1);
    const auto setter = setters.find(name);
    if (setter == setters.end()) throw UsageError("unknown flag --" + name);
    setter->second(name, value);
  }
  try {
    gd.validate();
  } catch (const c10::Error& error) {
    throw UsageError(std::string("GradDrop options: ") + error.what_without_backtrace());
  }
  return settings;
}

std::string usage(const std::string& program) {
  const DemoSettings d;
  std::ostringstream text;
  text << "Usage: " << program << " [--name=value ...]\n"
       << "\n"
       << "Trains a multitask LeNet on Multi-Fashion twice from the same initial weights and\n"
       << "data order: with equal loss weights, and with a GradDropLayer between the shared\n"
       << "trunk and the two heads. Prints per-task test accuracy and time per epoch, writes\n"
       << "per-epoch metrics as CSV and plots test accuracy with gnuplot.\n"
       << "\n"
       << "Training:\n"
       << "  --epochs=N           epochs per run (" << d.epochs << ")\n"
       << "  --batch-size=N       training batch size (" << d.batch_size << ")\n"
       << "  --lr=X               learning rate (" << d.learning_rate << ")\n"
       << "  --optimizer=NAME     adam or sgd (momentum 0.9) (" << d.optimizer << ")\n"
       << "  --seeds=A,B,...      seeds of initial weights, data order and GradDrop's draws;\n"
       << "                       several give mean +- std (" << d.seeds[0] << ")\n"
       << "  --device=NAME        cpu or cuda (" << d.device << ")\n"
       << "  --threads=N          CPU threads for LibTorch (" << d.threads << "); on a busy\n"
       << "                       machine OpenMP's waiting threads make 2 slower than 1: try\n"
       << "                       2 or more when the cores are idle\n"
       << "Data (Debian's dataset-fashion-mnist):\n"
       << "  --train-size=N       Multi-Fashion training pairs, from the 60000 train items ("
       << d.train_size << ")\n"
       << "  --test-size=N        test pairs, from the 10000 test items (" << d.test_size << ")\n"
       << "  --canvas=28|36       resize the 36x36 canvas to 28x28, or keep it (" << d.canvas
       << ")\n"
       << "  --pair-seed=N        seed of the pair draw, fixed so all runs share the data ("
       << d.pair_seed << ")\n"
       << "  --data-dir=PATH      directory of the *-idx?-ubyte.gz files\n"
       << "                       (/usr/share/datasets/fashion-mnist)\n"
       << "GradDrop (docs/design.md, What GradDrop computes):\n"
       << "  --leak=L | L1,L2     per-task leak in [0, 1] (0)\n"
       << "  --marginalize=BOOL   sum the sign signal over the batch (true)\n"
       << "  --keep-function=F    linear or sigmoid (linear)\n"
       << "  --scale=X            slope of the keep function at P = 0.5 (1)\n"
       << "  --zero-sign=MODE     drop or keep a task whose signal is zero (drop)\n"
       << "  --sign-source=S      activation_sign, activation_value or none (activation_sign)\n"
       << "  --keep-grad-norm     rescale to the norm of the plain sum (false)\n"
       << "  --epsilon=X          purity denominator epsilon (1e-7)\n"
       << "Output:\n"
       << "  --out-dir=PATH       where the CSV, gnuplot script and PNG go (" << d.out_dir
       << ")\n"
       << "  --no-plot            write the CSV only\n"
       << "  --no-progress        no progress bar (it is only drawn on a terminal anyway)\n"
       << "Step time comparison (instead of training):\n"
       << "  --compare-step-time  time one training step: equal weights, GradDropLayer (one\n"
       << "                       backward), and per-task backward + graddrop::combine + trunk\n"
       << "                       backward (how Python libraries compute GradDrop)\n"
       << "  --timing-rounds=N    rounds, each timing every method once (" << d.timing_rounds
       << ")\n"
       << "  --timing-steps=N     steps per method per round (" << d.timing_steps << ")\n"
       << "  --help               this text\n";
  return text.str();
}

}  // namespace fashion
