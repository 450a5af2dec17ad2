#include "fashion/samples.h"

#include <algorithm>
#include <fstream>
#include <stdexcept>

namespace fashion {

const char* class_name(int64_t label) {
  static const char* const kNames[] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                       "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return label >= 0 && label < 10 ? kNames[label] : "?";
}

std::string write_samples_pgm(const std::string& path, const MultiFashionSet& set,
                              int64_t count) {
  constexpr int64_t kGap = 2;
  count = std::min(count, set.size());
  const auto images = set.images.slice(0, 0, count).squeeze(1).cpu();
  const int64_t side = images.size(1);
  const int64_t width = count * side + (count - 1) * kGap;
  // A white background shows where one image ends.
  auto row = torch::full({side, width}, 255, torch::kUInt8);
  for (int64_t i = 0; i < count; ++i) {
    row.slice(1, i * (side + kGap), i * (side + kGap) + side)
        .copy_((images[i] * 255.0).round().clamp(0, 255).to(torch::kUInt8));
  }
  std::ofstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot write " + path);
  file << "P5\n" << width << ' ' << side << "\n255\n";
  file.write(reinterpret_cast<const char*>(row.contiguous().data_ptr<uint8_t>()), side * width);
  if (!file.flush()) throw std::runtime_error("cannot write " + path);

  std::string labels;
  const auto first = set.labels_first.cpu();
  const auto second = set.labels_second.cpu();
  for (int64_t i = 0; i < count; ++i) {
    labels += std::string(i ? ", " : "") + class_name(first[i].item<int64_t>()) + " / " +
              class_name(second[i].item<int64_t>());
  }
  return labels;
}

}  // namespace fashion
