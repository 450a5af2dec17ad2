#pragma once
// A look at the data: the first few Multi-Fashion images side by side, as a PGM file any image
// viewer opens, with their two labels.
#include <cstdint>
#include <string>

#include "fashion/multi_fashion.h"

namespace fashion {

/// The Fashion-MNIST class names, by label.
const char* class_name(int64_t label);

/// Writes the first `count` images of `set` in a row (2 pixels of gap) as a binary PGM.
/// Returns the "first item / second item" class names of each image, comma separated.
std::string write_samples_pgm(const std::string& path, const MultiFashionSet& set, int64_t count);

}  // namespace fashion
