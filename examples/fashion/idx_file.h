#pragma once
// Reading the gzipped IDX files of Debian's dataset-fashion-mnist (the MNIST file format).
#include <stdexcept>
#include <string>

#include <torch/types.h>

namespace fashion {

/// Where Debian's dataset-fashion-mnist installs the data set.
inline constexpr const char* kDefaultDataDirectory = "/usr/share/datasets/fashion-mnist";

/// A data file is missing, unreadable or not what Fashion-MNIST ships; the message names the
/// file, what is wrong, and the Debian package that provides it.
class DatasetError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// One split of Fashion-MNIST: `images` uint8 [N, 28, 28], `labels` int64 [N] in 0..9.
struct FashionSplit {
  torch::Tensor images;
  torch::Tensor labels;
};

/// Reads a gzipped IDX file of unsigned bytes with `expected_dims` dimensions (3 for images,
/// 1 for labels) into a uint8 tensor of the stored shape. Throws DatasetError.
torch::Tensor read_idx_ubyte_gz(const std::string& path, int64_t expected_dims);

/// Reads the "train" (60000 items) or "t10k" (10000 items) split from `directory`, checking
/// the magic numbers, the image size, the item counts and the label range.
FashionSplit load_fashion_split(const std::string& directory, const std::string& split);

}  // namespace fashion
