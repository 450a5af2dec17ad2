#pragma once
// What one GradDrop call did, for logging. Counted over the elements of the purity tensor P
// (features when the batch is marginalised, elements otherwise).
#include <cstdint>
#include <ostream>
#include <vector>

namespace graddrop {

struct GradDropStatistics {
  /// Per task: the fraction of P's elements where the task's mask M_i was 1.
  std::vector<double> kept_fraction;
  /// The mean of P.
  double mean_purity = 0.0;
  /// The fraction of P's elements where some task's signal was positive and another's negative.
  double conflict_fraction = 0.0;
  /// How many elements P had (0 for an empty activation; the fractions are then 0).
  int64_t purity_elements = 0;
};

std::ostream& operator<<(std::ostream& stream, const GradDropStatistics& statistics);

}  // namespace graddrop
