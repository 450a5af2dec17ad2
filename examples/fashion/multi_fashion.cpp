#include "fashion/multi_fashion.h"

#include <stdexcept>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/upsampling.h>

namespace fashion {
namespace {

// Composing all pairs at once would hold 60000 float canvases of 36x36 (311 MB); chunks keep
// the peak small.
constexpr int64_t kComposeChunk = 4096;

}  // namespace

torch::Tensor compose_canvas(const torch::Tensor& first_items, const torch::Tensor& second_items,
                             int64_t output_side) {
  using torch::indexing::Slice;
  const int64_t batch = first_items.size(0);
  const int64_t item_side = first_items.size(1);
  auto canvas = torch::zeros({batch, 1, kCanvasSide, kCanvasSide});
  canvas.index_put_({Slice(), 0, Slice(0, item_side), Slice(0, item_side)},
                    first_items.to(torch::kFloat));
  auto second_window = canvas.index({Slice(), 0, Slice(kSecondItemOffset,
                                                        kSecondItemOffset + item_side),
                                     Slice(kSecondItemOffset, kSecondItemOffset + item_side)});
  second_window.copy_(torch::maximum(second_window, second_items.to(torch::kFloat)));
  canvas.div_(255.0);
  if (output_side == kCanvasSide) return canvas;
  namespace F = torch::nn::functional;
  return F::interpolate(canvas, F::InterpolateFuncOptions()
                                    .size(std::vector<int64_t>{output_side, output_side})
                                    .mode(torch::kBilinear)
                                    .align_corners(false));
}

MultiFashionSet make_multi_fashion(const FashionSplit& split, int64_t pairs, uint64_t seed,
                                   int64_t output_side) {
  if (output_side != 28 && output_side != kCanvasSide) {
    throw std::invalid_argument("the Multi-Fashion canvas is 28 (resized) or 36 (kept), got " +
                                std::to_string(output_side));
  }
  const int64_t items = split.images.size(0);
  if (pairs < 1) throw std::invalid_argument("the number of pairs must be positive");
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);

  std::vector<torch::Tensor> first_parts;
  for (int64_t covered = 0; covered < pairs; covered += items) {
    first_parts.push_back(torch::randperm(items, generator, torch::kLong));
  }
  auto first = torch::cat(first_parts).slice(0, 0, pairs);
  // Drawing from items - 1 and stepping over the first item keeps the second one uniform over
  // the other items.
  auto second = torch::randint(0, items - 1, {pairs}, generator, torch::kLong);
  second += (second >= first).to(torch::kLong);

  MultiFashionSet set;
  set.images = torch::empty({pairs, 1, output_side, output_side});
  for (int64_t begin = 0; begin < pairs; begin += kComposeChunk) {
    const int64_t end = std::min(pairs, begin + kComposeChunk);
    set.images.slice(0, begin, end)
        .copy_(compose_canvas(split.images.index_select(0, first.slice(0, begin, end)),
                              split.images.index_select(0, second.slice(0, begin, end)),
                              output_side));
  }
  set.labels_first = split.labels.index_select(0, first);
  set.labels_second = split.labels.index_select(0, second);
  return set;
}

}  // namespace fashion
