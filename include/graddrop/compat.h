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
