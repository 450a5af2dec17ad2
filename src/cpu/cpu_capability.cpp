#include "cpu/cpu_capability.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include <c10/util/Exception.h>

namespace graddrop {
namespace cpu {
namespace {

bool cpu_runs(Capability capability) {
  switch (capability) {
    case Capability::kBaseline:
      return true;
    case Capability::kAvx2:
#if defined(GRADDROP_CPU_HAS_AVX2)
      // __builtin_cpu_supports also checks that the OS saves the wider registers.
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
#else
      return false;
#endif
    case Capability::kAvx512:
#if defined(GRADDROP_CPU_HAS_AVX512)
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
#else
      return false;
#endif
  }
  return false;
}

Capability best_capability() {
  const auto levels = supported_capabilities();
  return levels.back();
}

Capability initial_capability() {
  const Capability best = best_capability();
  const char* requested = std::getenv("GRADDROP_CPU_CAPABILITY");
  if (requested == nullptr) return best;
  for (auto level : {Capability::kBaseline, Capability::kAvx2, Capability::kAvx512}) {
    if (to_string(level) == requested) {
      return static_cast<int>(level) <= static_cast<int>(best) ? level : best;
    }
  }
  TORCH_WARN("graddrop: GRADDROP_CPU_CAPABILITY='", requested,
             "' is not one of baseline, avx2, avx512; using ", to_string(best));
  return best;
}

std::atomic<int>& active_level() {
  static std::atomic<int> level{static_cast<int>(initial_capability())};
  return level;
}

}  // namespace

std::string to_string(Capability capability) {
  switch (capability) {
    case Capability::kBaseline:
      return "baseline";
    case Capability::kAvx2:
      return "avx2";
    case Capability::kAvx512:
      return "avx512";
  }
  return "unknown";
}

std::vector<Capability> supported_capabilities() {
  std::vector<Capability> levels;
  for (auto level : {Capability::kBaseline, Capability::kAvx2, Capability::kAvx512}) {
    if (cpu_runs(level)) levels.push_back(level);
  }
  return levels;
}

Capability active_capability() { return static_cast<Capability>(active_level().load()); }

void set_active_capability(Capability capability) {
  TORCH_CHECK(cpu_runs(capability), "graddrop: this build or CPU cannot run the ",
              to_string(capability), " kernels");
  active_level().store(static_cast<int>(capability));
}

namespace {
std::atomic<int>& streaming_mode() {
  static std::atomic<int> mode{static_cast<int>(Streaming::kAuto)};
  return mode;
}
}  // namespace

void set_streaming(Streaming streaming) { streaming_mode().store(static_cast<int>(streaming)); }

Streaming active_streaming() { return static_cast<Streaming>(streaming_mode().load()); }

}  // namespace cpu
}  // namespace graddrop
