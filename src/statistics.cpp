#include "graddrop/statistics.h"

namespace graddrop {

std::ostream& operator<<(std::ostream& stream, const GradDropStatistics& statistics) {
  stream << "GradDropStatistics(kept_fraction=[";
  for (size_t task = 0; task < statistics.kept_fraction.size(); ++task) {
    stream << (task ? ", " : "") << statistics.kept_fraction[task];
  }
  return stream << "], mean_purity=" << statistics.mean_purity
                << ", conflict_fraction=" << statistics.conflict_fraction
                << ", purity_elements=" << statistics.purity_elements << ")";
}

}  // namespace graddrop
