#pragma once
// The few places where Debian's LibTorch 1.13 and LibTorch 2.x differ, in one header.
#include <c10/util/Optional.h>
#include <torch/version.h>

namespace graddrop {

// c10::optional is its own class in 1.13 and an alias of std::optional in 2.x; the dispatcher
// accepts it in both, so the library spells optionals this way everywhere.
template <typename T>
using optional = c10::optional<T>;
using c10::nullopt;

}  // namespace graddrop

// Data-parallel GradDrop (a c10d process group in the options, `group_name` in the operator)
// needs c10d's process-group registry, which LibTorch has since 2.2; Debian's 1.13 has not, and
// there the feature is left out (GradDropOptions has no process_group, and the operator refuses
// a group_name). Decided from the headers, so the library and its users always agree.
#if defined(__has_include)
#if __has_include(<torch/csrc/distributed/c10d/GroupRegistry.hpp>)
#define GRADDROP_HAS_DISTRIBUTED 1
#endif
#endif
#ifndef GRADDROP_HAS_DISTRIBUTED
#define GRADDROP_HAS_DISTRIBUTED 0
#endif
