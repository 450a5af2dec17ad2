#pragma once
// Per-epoch records of both methods: the CSV file, and the summary table over seeds.
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "fashion/training.h"

namespace fashion {

struct EpochRecord {
  std::string method;  // "equal_weight" or "graddrop"
  uint64_t seed = 0;
  int64_t epoch = 0;   // 1-based
  EpochResult result;
};

/// mean and sample standard deviation (0 for a single value).
struct MeanStd {
  double mean = 0.0;
  double std = 0.0;
};
MeanStd mean_std(const std::vector<double>& values);

/// One method's final-epoch test accuracies over seeds and its training seconds per epoch over
/// every epoch of every seed.
struct MethodSummary {
  std::string method;
  MeanStd accuracy_first, accuracy_second, accuracy_mean;
  MeanStd epoch_seconds;
  int64_t seeds = 0;
};
MethodSummary summarize(const std::vector<EpochRecord>& records, const std::string& method);

/// method,seed,epoch,train_loss_task1,train_loss_task2,test_acc_task1,test_acc_task2,epoch_seconds
void write_metrics_csv(const std::string& path, const std::vector<EpochRecord>& records);

/// The results table; the last line gives GradDrop's time per epoch over the baseline's.
void print_results_table(std::ostream& out, const MethodSummary& equal_weight,
                         const MethodSummary& graddrop);

/// "epoch mean_t1 std_t1 mean_t2 std_t2" per epoch for one method, averaged over seeds: the
/// plot's data. Returns false when `method` has no records.
bool write_accuracy_curve(const std::string& path, const std::vector<EpochRecord>& records,
                          const std::string& method);

}  // namespace fashion
