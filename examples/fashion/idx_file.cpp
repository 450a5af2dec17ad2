#include "fashion/idx_file.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <sstream>
#include <sys/stat.h>
#include <vector>

namespace fashion {
namespace {

constexpr const char* kPackageHint =
    "; Fashion-MNIST comes from Debian's package dataset-fashion-mnist "
    "(apt-get install dataset-fashion-mnist, or bash scripts/setup.sh)";

// IDX magic: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions.
constexpr uint32_t kUnsignedByteType = 0x08;

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw DatasetError(path + ": " + problem + kPackageHint);
}

struct GzFileCloser {
  void operator()(gzFile_s* file) const { gzclose(file); }
};
using GzFile = std::unique_ptr<gzFile_s, GzFileCloser>;

// gzread takes an unsigned count; read in chunks so any size fits. Returns the bytes read.
int64_t read_bytes(gzFile file, void* destination, int64_t size, const std::string& path) {
  auto* bytes = static_cast<unsigned char*>(destination);
  int64_t done = 0;
  while (done < size) {
    const unsigned chunk = static_cast<unsigned>(std::min<int64_t>(size - done, 1 << 26));
    const int got = gzread(file, bytes + done, chunk);
    if (got < 0) {
      int code = 0;
      const char* message = gzerror(file, &code);
      fail(path, std::string("corrupt gzip stream (") + (message ? message : "zlib error") + ")");
    }
    if (got == 0) break;
    done += got;
  }
  return done;
}

uint32_t big_endian_u32(const unsigned char* bytes) {
  return (uint32_t{bytes[0]} << 24) | (uint32_t{bytes[1]} << 16) | (uint32_t{bytes[2]} << 8) |
         uint32_t{bytes[3]};
}

}  // namespace

torch::Tensor read_idx_ubyte_gz(const std::string& path, int64_t expected_dims) {
  struct stat info {};
  if (stat(path.c_str(), &info) != 0) fail(path, "file not found");
  GzFile file(gzopen(path.c_str(), "rb"));
  if (!file) fail(path, "cannot open");

  std::array<unsigned char, 4> magic{};
  if (read_bytes(file.get(), magic.data(), 4, path) != 4) fail(path, "truncated IDX header");
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != kUnsignedByteType ||
      magic[3] != expected_dims) {
    std::ostringstream message;
    message << "bad IDX magic 0x" << std::hex << big_endian_u32(magic.data()) << " (expected 0x"
            << ((kUnsignedByteType << 8) | static_cast<uint32_t>(expected_dims))
            << ": unsigned bytes, " << std::dec << expected_dims << " dimensions)";
    fail(path, message.str());
  }

  std::vector<int64_t> shape;
  int64_t elements = 1;
  for (int64_t dim = 0; dim < expected_dims; ++dim) {
    std::array<unsigned char, 4> size_bytes{};
    if (read_bytes(file.get(), size_bytes.data(), 4, path) != 4) {
      fail(path, "truncated IDX header");
    }
    const int64_t size = big_endian_u32(size_bytes.data());
    shape.push_back(size);
    elements *= size;
  }

  auto data = torch::empty(shape, torch::kUInt8);
  const int64_t got = read_bytes(file.get(), data.data_ptr<uint8_t>(), elements, path);
  if (got != elements) {
    fail(path, "truncated: the header promises " + std::to_string(elements) + " bytes, found " +
                   std::to_string(got));
  }
  unsigned char extra = 0;
  if (read_bytes(file.get(), &extra, 1, path) != 0) {
    fail(path, "more data than the header's " + std::to_string(elements) + " bytes");
  }
  return data;
}

FashionSplit load_fashion_split(const std::string& directory, const std::string& split) {
  const int64_t expected_items = split == "train" ? 60000 : 10000;
  const std::string images_path = directory + "/" + split + "-images-idx3-ubyte.gz";
  const std::string labels_path = directory + "/" + split + "-labels-idx1-ubyte.gz";

  FashionSplit result{read_idx_ubyte_gz(images_path, 3), read_idx_ubyte_gz(labels_path, 1)};
  const auto image_shape = result.images.sizes();
  if (image_shape[0] != expected_items || image_shape[1] != 28 || image_shape[2] != 28) {
    std::ostringstream message;
    message << "wrong size " << result.images.sizes() << " (expected [" << expected_items
            << ", 28, 28])";
    fail(images_path, message.str());
  }
  if (result.labels.size(0) != expected_items) {
    fail(labels_path, "wrong size " + std::to_string(result.labels.size(0)) + " (expected " +
                          std::to_string(expected_items) + ")");
  }
  if (result.labels.max().item<int64_t>() > 9) fail(labels_path, "label outside 0..9");
  result.labels = result.labels.to(torch::kLong);
  return result;
}

}  // namespace fashion
