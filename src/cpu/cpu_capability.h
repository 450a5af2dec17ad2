#pragma once
// Which instruction set the CPU kernels of graddrop::combine use. The kernels are compiled once
// per instruction set (like ATen's own CPU kernels) and chosen at run time: the best one the
// CPU supports, or the one named by GRADDROP_CPU_CAPABILITY (baseline, avx2, avx512; a level
// the CPU lacks falls back to the best it has). Every level computes bit-identical results.
#include <cstdint>
#include <string>
#include <vector>

namespace graddrop {
namespace cpu {

enum class Capability : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

std::string to_string(Capability capability);

// The levels this build has and this CPU can run, lowest first.
std::vector<Capability> supported_capabilities();

// The level the kernels use now.
Capability active_capability();

// U of logical indices [first, first + count) (first a multiple of 4) as the kernels of
// `capability` draw it; writes count rounded up to a multiple of 4 values. Tests compare it
// with detail::philox_uniform where the full kernels cannot reach (group indices past 2^32).
void draw_uniform(Capability capability, uint64_t seed, uint64_t offset, int64_t first,
                  int64_t count, float* uniform);

// Forces a level for this process (tests and benchmarks compare levels); a level the CPU lacks
// is refused with c10::Error.
void set_active_capability(Capability capability);

// When the kernels write the output with non-temporal (streaming) stores: kAuto for outputs
// larger than the last-level cache (the default), or always, or never (tests and benchmarks
// compare them; the values written are the same).
enum class Streaming : int { kAuto = 0, kAlways = 1, kNever = 2 };
void set_streaming(Streaming streaming);
Streaming active_streaming();

}  // namespace cpu
}  // namespace graddrop
