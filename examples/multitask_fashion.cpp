// Multi-Fashion multitask training (docs/demo.md): a LeNet trunk shared by two 10-way heads,
// trained with equal loss weights and with a GradDropLayer between trunk and heads, from the
// same initial weights and in the same data order. Prints per-task test accuracy and time per
// epoch, writes the per-epoch metrics as CSV, and plots test accuracy with gnuplot.
//
//   multitask_fashion --help
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "fashion/command_line.h"
#include "fashion/idx_file.h"
#include "fashion/lenet.h"
#include "fashion/metrics.h"
#include "fashion/multi_fashion.h"
#include "fashion/plot.h"
#include "fashion/progress.h"
#include "fashion/samples.h"
#include "fashion/step_timing.h"
#include "fashion/training.h"
#include "graddrop/graddrop.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

constexpr int64_t kEvaluationBatch = 1000;
const std::string kEqualWeight = "equal_weight";
const std::string kGradDrop = "graddrop";

struct Data {
  fashion::MultiFashionSet train, test;
};

Data load_data(const fashion::DemoSettings& settings, const torch::Device& device) {
  const auto start = Clock::now();
  const std::string directory =
      settings.data_dir.empty() ? fashion::kDefaultDataDirectory : settings.data_dir;
  const auto train_split = fashion::load_fashion_split(directory, "train");
  const auto test_split = fashion::load_fashion_split(directory, "t10k");
  // Test pairs use a seed of their own so they are not the train pairs' draw replayed.
  Data data{fashion::make_multi_fashion(train_split, settings.train_size, settings.pair_seed,
                                        settings.canvas),
            fashion::make_multi_fashion(test_split, settings.test_size, settings.pair_seed + 1,
                                        settings.canvas)};
  data.train = fashion::to_device(data.train, device);
  data.test = fashion::to_device(data.test, device);
  std::printf("data: Fashion-MNIST from %s; Multi-Fashion %lld train pairs, %lld test pairs, "
              "%lldx%lld (pair seed %llu), built in %.1fs\n",
              directory.c_str(), static_cast<long long>(data.train.size()),
              static_cast<long long>(data.test.size()), static_cast<long long>(settings.canvas),
              static_cast<long long>(settings.canvas),
              static_cast<unsigned long long>(settings.pair_seed), seconds_since(start));
  return data;
}

int compare_step_time(const fashion::DemoSettings& settings, const Data& data) {
  fashion::StepTimingSettings timing;
  timing.batch_size = settings.batch_size;
  timing.rounds = settings.timing_rounds;
  timing.steps_per_round = settings.timing_steps;
  timing.optimizer = settings.optimizer;
  timing.learning_rate = settings.learning_rate;
  std::printf("step time: batch %lld, %s, median over %lld rounds of %lld steps per method "
              "(forward, backward, %s step)\n",
              static_cast<long long>(std::min(settings.batch_size, data.train.size())),
              settings.device.c_str(), static_cast<long long>(timing.rounds),
              static_cast<long long>(timing.steps_per_round), timing.optimizer.c_str());
  const auto times =
      fashion::compare_step_times(data.train, settings.canvas, settings.graddrop, timing);
  std::printf("  %-52s %8.3f ms\n", "equal weight (one backward, no GradDrop)",
              times.equal_weight_ms);
  std::printf("  %-52s %8.3f ms  %.3fx equal weight\n", "GradDropLayer (one backward)",
              times.graddrop_layer_ms, times.graddrop_layer_ms / times.equal_weight_ms);
  std::printf("  %-52s %8.3f ms  %.3fx equal weight\n",
              "per-task backward + combine + trunk backward", times.per_task_backward_ms,
              times.per_task_backward_ms / times.equal_weight_ms);
  std::printf("per-task backward (Python libraries' way) / GradDropLayer: %.3fx\n",
              times.per_task_backward_ms / times.graddrop_layer_ms);
  std::printf("same function check: max |gradient difference| between the two GradDrop paths "
              "with one fixed Philox seed = %.3g\n",
              times.max_gradient_difference);
  return 0;
}

std::vector<fashion::EpochRecord> train_both(const fashion::DemoSettings& settings,
                                             const Data& data, const torch::Device& device) {
  std::vector<fashion::EpochRecord> records;
  fashion::ProgressBar progress(settings.progress_bar);
  for (size_t seed_index = 0; seed_index < settings.seeds.size(); ++seed_index) {
    const uint64_t seed = settings.seeds[seed_index];
    torch::manual_seed(seed);
    std::vector<fashion::TrainingRun> runs;
    runs.push_back({kEqualWeight, fashion::MultiLeNet(settings.canvas, c10::nullopt), nullptr});
    runs.push_back({kGradDrop, fashion::MultiLeNet(settings.canvas, settings.graddrop), nullptr});
    // The GradDrop model starts from the baseline's weights, whatever its construction drew.
    fashion::copy_parameters(*runs[1].model, *runs[0].model);
    if (seed_index == 0) {
      std::cout << "model: LeNet trunk (conv 1->10 k5, pool, relu, conv 10->20 k5, pool, relu, "
                   "fc -> 50, relu), two 10-way heads; the GradDrop run adds\n  "
                << *runs[1].model->graddrop_layer << "\n";
    }
    for (auto& run : runs) {
      run.model->to(device);
      fashion::warm_up(run.model, data.train, settings.batch_size);
      run.optimizer =
          fashion::make_optimizer(settings.optimizer, run.model, settings.learning_rate);
    }

    for (int64_t epoch = 1; epoch <= settings.epochs; ++epoch) {
      char label[64];
      std::snprintf(label, sizeof label, "seed %llu epoch %lld/%lld",
                    static_cast<unsigned long long>(seed), static_cast<long long>(epoch),
                    static_cast<long long>(settings.epochs));
      progress.start(label);
      // Both methods see the same batches in the same order.
      const auto epochs_before =
          static_cast<double>(static_cast<int64_t>(seed_index) * settings.epochs + epoch - 1);
      const auto epochs_in_run =
          static_cast<double>(static_cast<int64_t>(settings.seeds.size()) * settings.epochs);
      auto results = fashion::train_epoch(
          runs, data.train, fashion::epoch_order(data.train.size(), seed, epoch),
          settings.batch_size, [&](int64_t done, int64_t total) {
            const double epoch_fraction = static_cast<double>(done) / static_cast<double>(total);
            progress.update(done, total, (epochs_before + epoch_fraction) / epochs_in_run);
          });
      progress.clear();
      for (size_t r = 0; r < runs.size(); ++r) {
        auto& result = results[r];
        result.test_accuracy = fashion::evaluate(runs[r].model, data.test, kEvaluationBatch);
        std::printf("%s %-12s  loss %.4f %.4f  test acc %6.2f%% %6.2f%%  train %.2fs\n", label,
                    runs[r].method.c_str(), result.train_loss[0], result.train_loss[1],
                    100.0 * result.test_accuracy[0], 100.0 * result.test_accuracy[1],
                    result.train_seconds);
        records.push_back({runs[r].method, seed, epoch, result});
      }
      std::fflush(stdout);
    }
  }
  return records;
}

void write_outputs(const fashion::DemoSettings& settings,
                   const std::vector<fashion::EpochRecord>& records,
                   const fashion::MultiFashionSet& test) {
  namespace fs = std::filesystem;
  const fs::path out_dir(settings.out_dir);
  fs::create_directories(out_dir);
  const auto csv = (out_dir / "multitask_fashion_metrics.csv").string();
  fashion::write_metrics_csv(csv, records);
  std::printf("metrics: %s\n", csv.c_str());
  const auto samples = (out_dir / "multitask_fashion_samples.pgm").string();
  const auto sample_labels = fashion::write_samples_pgm(samples, test, 8);
  std::printf("samples: %s, the first 8 test pairs (task 1 / task 2): %s\n", samples.c_str(),
              sample_labels.c_str());
  if (!settings.plot) return;

  const auto equal_weight_curve = (out_dir / "multitask_fashion_equal_weight.dat").string();
  const auto graddrop_curve = (out_dir / "multitask_fashion_graddrop.dat").string();
  const auto script = (out_dir / "multitask_fashion_accuracy.gp").string();
  const auto png = (out_dir / "multitask_fashion_accuracy.png").string();
  fashion::write_accuracy_curve(equal_weight_curve, records, kEqualWeight);
  fashion::write_accuracy_curve(graddrop_curve, records, kGradDrop);
  fashion::write_gnuplot_script(script, png, equal_weight_curve, graddrop_curve,
                                settings.seeds.size() > 1, settings.epochs);
  switch (fashion::run_gnuplot(script)) {
    case fashion::PlotStatus::kWritten:
      std::printf("plot: %s\n", png.c_str());
      break;
    case fashion::PlotStatus::kGnuplotMissing:
      std::printf("plot: skipped, gnuplot is not installed (Debian: apt-get install "
                  "gnuplot-nox); the metrics CSV is written, and %s draws the plot later\n",
                  script.c_str());
      break;
    case fashion::PlotStatus::kGnuplotFailed:
      std::printf("plot: gnuplot failed on %s (its message is above); the metrics CSV is "
                  "written\n",
                  script.c_str());
      break;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const auto program_start = Clock::now();
  const std::string program = argc > 0 ? std::filesystem::path(argv[0]).filename().string()
                                       : "multitask_fashion";
  fashion::DemoSettings settings;
  try {
    settings = fashion::parse_command_line(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const fashion::UsageError& error) {
    std::fprintf(stderr, "%s: %s\nRun %s --help for the flags.\n", program.c_str(), error.what(),
                 program.c_str());
    return 2;
  }
  if (settings.help) {
    std::cout << fashion::usage(program);
    return 0;
  }
  if (settings.device == "cuda" && !torch::cuda::is_available()) {
    std::fprintf(stderr,
                 "%s: --device=cuda, but CUDA is not available: this LibTorch was built without "
                 "CUDA or no GPU is visible. Use --device=cpu.\n",
                 program.c_str());
    return 1;
  }
  const torch::Device device(settings.device == "cuda" ? torch::kCUDA : torch::kCPU);
  at::set_num_threads(settings.threads);
  std::printf("multitask_fashion: LibTorch %s, device %s, %d CPU threads\n", TORCH_VERSION,
              settings.device.c_str(), at::get_num_threads());
  if (!settings.compare_step_time) {
    std::printf("training: %lld epochs, batch %lld, %s lr %g, seeds",
                static_cast<long long>(settings.epochs),
                static_cast<long long>(settings.batch_size), settings.optimizer.c_str(),
                settings.learning_rate);
    for (const auto seed : settings.seeds) {
      std::printf(" %llu", static_cast<unsigned long long>(seed));
    }
    std::printf("\n");
  }

  try {
    const auto data = load_data(settings, device);
    if (settings.compare_step_time) return compare_step_time(settings, data);
    const auto records = train_both(settings, data, device);
    std::printf("\n");
    print_results_table(std::cout,
                        fashion::summarize(records, kEqualWeight),
                        fashion::summarize(records, kGradDrop));
    write_outputs(settings, records, data.test);
  } catch (const fashion::DatasetError& error) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), error.what());
    return 1;
  } catch (const c10::Error& error) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), error.what_without_backtrace());
    return 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), error.what());
    return 1;
  }
  std::printf("total wall time %.1fs\n", seconds_since(program_start));
  return 0;
}
