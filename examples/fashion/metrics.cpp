#include "fashion/metrics.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <map>
#include <stdexcept>

namespace fashion {

MeanStd mean_std(const std::vector<double>& values) {
  MeanStd result;
  if (values.empty()) return result;
  for (double value : values) result.mean += value;
  result.mean /= static_cast<double>(values.size());
  if (values.size() > 1) {
    double squares = 0.0;
    for (double value : values) squares += (value - result.mean) * (value - result.mean);
    result.std = std::sqrt(squares / static_cast<double>(values.size() - 1));
  }
  return result;
}

MethodSummary summarize(const std::vector<EpochRecord>& records, const std::string& method) {
  std::map<uint64_t, const EpochRecord*> last_epoch;
  std::vector<double> seconds;
  for (const auto& record : records) {
    if (record.method != method) continue;
    seconds.push_back(record.result.train_seconds);
    auto& last = last_epoch[record.seed];
    if (!last || last->epoch < record.epoch) last = &record;
  }
  std::vector<double> first, second, mean;
  for (const auto& [seed, record] : last_epoch) {
    first.push_back(record->result.test_accuracy[0]);
    second.push_back(record->result.test_accuracy[1]);
    mean.push_back(0.5 * (first.back() + second.back()));
  }
  MethodSummary summary;
  summary.method = method;
  summary.accuracy_first = mean_std(first);
  summary.accuracy_second = mean_std(second);
  summary.accuracy_mean = mean_std(mean);
  summary.epoch_seconds = mean_std(seconds);
  summary.seeds = static_cast<int64_t>(last_epoch.size());
  return summary;
}

void write_metrics_csv(const std::string& path, const std::vector<EpochRecord>& records) {
  std::ofstream file(path);
  if (!file) throw std::runtime_error("cannot write " + path);
  file << "method,seed,epoch,train_loss_task1,train_loss_task2,test_acc_task1,test_acc_task2,"
          "epoch_seconds\n";
  file << std::setprecision(6);
  for (const auto& record : records) {
    const auto& r = record.result;
    file << record.method << ',' << record.seed << ',' << record.epoch << ',' << r.train_loss[0]
         << ',' << r.train_loss[1] << ',' << r.test_accuracy[0] << ',' << r.test_accuracy[1]
         << ',' << r.train_seconds << '\n';
  }
  if (!file.flush()) throw std::runtime_error("cannot write " + path);
}

namespace {

std::string percent(const MeanStd& value, bool with_std) {
  char text[64];
  if (with_std) {
    std::snprintf(text, sizeof text, "%6.2f +- %.2f", 100.0 * value.mean, 100.0 * value.std);
  } else {
    std::snprintf(text, sizeof text, "%6.2f", 100.0 * value.mean);
  }
  return text;
}

std::string seconds(const MeanStd& value, bool with_std) {
  char text[64];
  if (with_std) {
    std::snprintf(text, sizeof text, "%7.2f +- %.2f", value.mean, value.std);
  } else {
    std::snprintf(text, sizeof text, "%7.2f", value.mean);
  }
  return text;
}

}  // namespace

void print_results_table(std::ostream& out, const MethodSummary& equal_weight,
                         const MethodSummary& graddrop) {
  const bool with_std = equal_weight.seeds > 1 || graddrop.seeds > 1;
  const int column = with_std ? 16 : 10;
  out << "Test accuracy (%) after the last epoch";
  if (with_std) out << ", mean +- std over " << equal_weight.seeds << " seeds";
  out << "; training seconds per epoch\n";
  out << std::left << std::setw(14) << "method" << std::right << std::setw(column) << "task 1"
      << std::setw(column) << "task 2" << std::setw(column) << "mean" << std::setw(column)
      << "s/epoch" << '\n';
  for (const auto* summary : {&equal_weight, &graddrop}) {
    out << std::left << std::setw(14) << summary->method << std::right << std::setw(column)
        << percent(summary->accuracy_first, with_std) << std::setw(column)
        << percent(summary->accuracy_second, with_std) << std::setw(column)
        << percent(summary->accuracy_mean, with_std) << std::setw(column)
        << seconds(summary->epoch_seconds, with_std) << '\n';
  }
  char overhead[128];
  std::snprintf(overhead, sizeof overhead,
                "GradDrop time overhead: %.3fx the equal-weight time per epoch (%+.1f%%)\n",
                graddrop.epoch_seconds.mean / equal_weight.epoch_seconds.mean,
                100.0 * (graddrop.epoch_seconds.mean / equal_weight.epoch_seconds.mean - 1.0));
  out << overhead;
}

bool write_accuracy_curve(const std::string& path, const std::vector<EpochRecord>& records,
                          const std::string& method) {
  std::map<int64_t, std::pair<std::vector<double>, std::vector<double>>> by_epoch;
  for (const auto& record : records) {
    if (record.method != method) continue;
    by_epoch[record.epoch].first.push_back(record.result.test_accuracy[0]);
    by_epoch[record.epoch].second.push_back(record.result.test_accuracy[1]);
  }
  if (by_epoch.empty()) return false;
  std::ofstream file(path);
  if (!file) throw std::runtime_error("cannot write " + path);
  file << "# " << method << ": epoch, test accuracy (%) of task 1 mean std, of task 2 mean std\n";
  for (const auto& [epoch, accuracies] : by_epoch) {
    const auto first = mean_std(accuracies.first);
    const auto second = mean_std(accuracies.second);
    file << epoch << ' ' << 100.0 * first.mean << ' ' << 100.0 * first.std << ' '
         << 100.0 * second.mean << ' ' << 100.0 * second.std << '\n';
  }
  return static_cast<bool>(file.flush());
}

}  // namespace fashion
