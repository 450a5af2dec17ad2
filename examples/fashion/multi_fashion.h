#pragma once
// Multi-Fashion (docs/demo.md): two Fashion-MNIST items overlapped on one canvas, one task per
// item.
#include <cstdint>

#include <torch/types.h>

#include "fashion/idx_file.h"

namespace fashion {

/// Side of the canvas the two items are composed on, and the offset of the second item.
constexpr int64_t kCanvasSide = 36;
constexpr int64_t kSecondItemOffset = 6;

/// A Multi-Fashion set: `images` float [K, 1, side, side] in [0, 1]; `labels_first` and
/// `labels_second` int64 [K], the classes of the top-left and of the shifted item.
struct MultiFashionSet {
  torch::Tensor images;
  torch::Tensor labels_first;
  torch::Tensor labels_second;

  int64_t size() const { return images.size(0); }
};

/// Composes `pairs` images from `split`. The first items walk through a random permutation of
/// the split (repeating it when `pairs` exceeds the split), the second items are drawn
/// uniformly, never the same item as the first; both from a generator seeded with `seed`, so
/// the set depends only on (split, pairs, seed, output_side). Each canvas holds the first item
/// at rows/columns 0-27 and the second at 6-33, overlapping pixels take the maximum, and it is
/// resized to `output_side` (28: bilinear, as in the literature; 36: kept as composed).
MultiFashionSet make_multi_fashion(const FashionSplit& split, int64_t pairs, uint64_t seed,
                                   int64_t output_side);

/// The composition alone, for a batch of items: uint8 [B, 28, 28] twice -> float
/// [B, 1, side, side] in [0, 1].
torch::Tensor compose_canvas(const torch::Tensor& first_items, const torch::Tensor& second_items,
                             int64_t output_side);

}  // namespace fashion
