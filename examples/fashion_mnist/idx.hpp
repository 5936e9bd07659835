// SPDX-License-Identifier: MIT
// Fashion-MNIST in the IDX format (gzip-compressed or plain), read with zlib.
#pragma once

#include <zlib.h>

#include <Eigen/Core>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fmnist {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Dataset {
  Matrix images;            // (n, 784), standardized pixels
  std::vector<int> labels;  // n class indices in [0, 10)
  Eigen::Index size() const { return images.rows(); }
};

// The whole file, decompressed; gzread passes plain files through unchanged.
// Returns false if the file cannot be opened.
inline bool read_gz(const std::string& path, std::vector<unsigned char>& out) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) return false;
  out.clear();
  unsigned char chunk[1 << 16];
  for (;;) {
    const int n = gzread(file, chunk, sizeof chunk);
    if (n < 0) {
      gzclose(file);
      throw std::runtime_error(path + ": corrupt gzip data");
    }
    if (n == 0) break;
    out.insert(out.end(), chunk, chunk + n);
  }
  gzclose(file);
  return true;
}

inline std::uint32_t big_endian(const std::vector<unsigned char>& b, std::size_t at) {
  return std::uint32_t(b[at]) << 24 | std::uint32_t(b[at + 1]) << 16 |
         std::uint32_t(b[at + 2]) << 8 | std::uint32_t(b[at + 3]);
}

// Images of one IDX3 file, pixels scaled to [0, 1] and standardized with
// Fashion-MNIST's training mean 0.2860 and standard deviation 0.3530.
inline Matrix parse_images(const std::string& path, const std::vector<unsigned char>& b) {
  if (b.size() < 16 || big_endian(b, 0) != 0x00000803)
    throw std::runtime_error(path + ": not an IDX3 image file");
  const auto n = Eigen::Index(big_endian(b, 4));
  const auto pixels = Eigen::Index(big_endian(b, 8)) * Eigen::Index(big_endian(b, 12));
  if (pixels != 784 || b.size() != std::size_t(16 + n * pixels))
    throw std::runtime_error(path + ": expected 28x28 images and " + std::to_string(n) +
                             " of them");
  Matrix images(n, pixels);
  const unsigned char* p = b.data() + 16;
  for (Eigen::Index i = 0; i < images.size(); ++i)
    images.data()[i] = (float(p[i]) / 255.0f - 0.2860f) / 0.3530f;
  return images;
}

inline std::vector<int> parse_labels(const std::string& path, const std::vector<unsigned char>& b) {
  if (b.size() < 8 || big_endian(b, 0) != 0x00000801)
    throw std::runtime_error(path + ": not an IDX1 label file");
  const std::size_t n = big_endian(b, 4);
  if (b.size() != 8 + n) throw std::runtime_error(path + ": truncated");
  std::vector<int> labels(b.begin() + 8, b.end());
  for (int label : labels)
    if (label < 0 || label > 9) throw std::runtime_error(path + ": label outside 0..9");
  return labels;
}

// Reads `prefix`-images-idx3-ubyte(.gz) and `prefix`-labels-idx1-ubyte(.gz) from
// dir. Returns false (and the path looked for in `missing`) if a file is absent.
inline bool load_split(const std::string& dir, const std::string& prefix, Dataset& out,
                       std::string& missing) {
  std::vector<unsigned char> bytes;
  std::string path;
  auto open = [&](const std::string& name) {
    for (const char* suffix : {".gz", ""}) {
      path = dir + "/" + name + suffix;
      if (read_gz(path, bytes)) return true;
    }
    missing = dir + "/" + name + ".gz";
    return false;
  };
  if (!open(prefix + "-images-idx3-ubyte")) return false;
  out.images = parse_images(path, bytes);
  if (!open(prefix + "-labels-idx1-ubyte")) return false;
  out.labels = parse_labels(path, bytes);
  if (Eigen::Index(out.labels.size()) != out.images.rows())
    throw std::runtime_error(dir + ": " + prefix + " images and labels differ in count");
  return true;
}

// The first n examples (Fashion-MNIST's files are already in random order).
inline void truncate(Dataset& d, Eigen::Index n) {
  if (n <= 0 || n >= d.size()) return;
  d.images.conservativeResize(n, Eigen::NoChange);
  d.labels.resize(std::size_t(n));
}

}  // namespace fmnist
