#include "image.h"

#include <cmath>
#include <cstring>

namespace mobilepeft {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // PIL's resampling fixed point

double bicubic(double x) {  // Keys cubic, a = -0.5 (PIL's BICUBIC)
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

struct Taps {
  std::vector<int> start, count;
  std::vector<int32_t> weights;  // count_max per output sample
  int stride = 0;
};

Taps taps(int in_size, int out_size) {
  const double scale = double(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 2.0 * filter_scale;
  Taps t;
  t.stride = int(std::ceil(support)) * 2 + 1;
  t.weights.assign(size_t(out_size) * t.stride, 0);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    int xmin = std::max(int(center - support + 0.5), 0);
    int xmax = std::min(int(center + support + 0.5), in_size) - xmin;
    std::vector<double> k(xmax);
    double sum = 0;
    for (int x = 0; x < xmax; ++x) sum += k[x] = bicubic((x + xmin - center + 0.5) / filter_scale);
    for (int x = 0; x < xmax; ++x) {
      double w = sum != 0 ? k[x] / sum : 0;
      t.weights[size_t(xx) * t.stride + x] = int32_t(w < 0 ? w * (1 << kPrecisionBits) - 0.5 : w * (1 << kPrecisionBits) + 0.5);
    }
    t.start.push_back(xmin);
    t.count.push_back(xmax);
  }
  return t;
}

uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;
  return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

}  // namespace

RgbImage read_ppm(const std::string& path) {
  const std::string data = read_file(path);
  size_t i = 0;
  auto token = [&]() {
    while (i < data.size()) {  // whitespace and comments
      if (data[i] == '#') { while (i < data.size() && data[i] != '\n') ++i; }
      else if (std::isspace(static_cast<unsigned char>(data[i]))) ++i;
      else break;
    }
    size_t start = i;
    while (i < data.size() && !std::isspace(static_cast<unsigned char>(data[i]))) ++i;
    return data.substr(start, i - start);
  };
  RgbImage img;
  if (token() != "P6") throw BundleError(path + ": not a binary PPM (P6); convert the image with `convert in.jpg out.ppm`");
  try {
    img.width = std::stoi(token());
    img.height = std::stoi(token());
    if (std::stoi(token()) != 255) throw BundleError(path + ": PPM maxval must be 255");
  } catch (const std::logic_error&) {
    throw BundleError(path + ": malformed PPM header");
  }
  ++i;  // the single whitespace byte before the raster
  const size_t bytes = size_t(img.width) * img.height * 3;
  if (img.width <= 0 || img.height <= 0 || data.size() < i + bytes)
    throw BundleError(path + ": PPM raster is truncated");
  img.rgb.assign(data.begin() + long(i), data.begin() + long(i + bytes));
  return img;
}

std::vector<float> read_pixels_f32(const std::string& path, int size) {
  const std::string data = read_file(path);
  const size_t n = size_t(3) * size * size;
  if (data.size() != n * sizeof(float))
    throw BundleError(path + ": " + std::to_string(data.size()) + " bytes, expected " + std::to_string(n * sizeof(float)) +
                      " (float32 pixel_values [1,3," + std::to_string(size) + "," + std::to_string(size) + "])");
  std::vector<float> pixels(n);
  std::memcpy(pixels.data(), data.data(), data.size());
  return pixels;
}

RgbImage resize_bicubic(const RgbImage& in, int width, int height) {
  // Horizontal pass into 8-bit rows, then vertical, as PIL does.
  RgbImage mid{width, in.height, std::vector<uint8_t>(size_t(width) * in.height * 3)};
  const Taps h = taps(in.width, width);
  for (int y = 0; y < in.height; ++y)
    for (int xx = 0; xx < width; ++xx)
      for (int c = 0; c < 3; ++c) {
        int32_t acc = 1 << (kPrecisionBits - 1);
        for (int x = 0; x < h.count[xx]; ++x)
          acc += in.rgb[(size_t(y) * in.width + h.start[xx] + x) * 3 + c] * h.weights[size_t(xx) * h.stride + x];
        mid.rgb[(size_t(y) * width + xx) * 3 + c] = clip8(acc);
      }
  RgbImage out{width, height, std::vector<uint8_t>(size_t(width) * height * 3)};
  const Taps v = taps(in.height, height);
  for (int yy = 0; yy < height; ++yy)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c) {
        int32_t acc = 1 << (kPrecisionBits - 1);
        for (int y = 0; y < v.count[yy]; ++y)
          acc += mid.rgb[(size_t(v.start[yy] + y) * width + x) * 3 + c] * v.weights[size_t(yy) * v.stride + y];
        out.rgb[(size_t(yy) * width + x) * 3 + c] = clip8(acc);
      }
  return out;
}

std::vector<float> preprocess(const RgbImage& image, const Manifest& manifest) {
  const int size = int(manifest.integer("image_preprocessing.size"));
  const std::vector<double> pad = manifest.numbers("image_preprocessing.pad_color");
  const std::vector<double> mean = manifest.numbers("image_preprocessing.mean");
  const std::vector<double> std_ = manifest.numbers("image_preprocessing.std");
  const float divisor = float(1.0 / manifest.number("image_preprocessing.rescale"));
  // Letterbox onto a square canvas.
  RgbImage square = image;
  if (image.width != image.height) {
    const int side = std::max(image.width, image.height);
    square = {side, side, std::vector<uint8_t>(size_t(side) * side * 3)};
    for (size_t p = 0; p < size_t(side) * side; ++p)
      for (int c = 0; c < 3; ++c) square.rgb[p * 3 + c] = uint8_t(pad[c]);
    const int left = (side - image.width) / 2, top = (side - image.height) / 2;
    for (int y = 0; y < image.height; ++y)
      std::memcpy(&square.rgb[(size_t(y + top) * side + left) * 3], &image.rgb[size_t(y) * image.width * 3],
                  size_t(image.width) * 3);
  }
  // Shortest side to `size` (square here), then centre crop (a no-op on a square).
  RgbImage resized = square.width == size ? square : resize_bicubic(square, size, size);
  std::vector<float> pixels(size_t(3) * size * size);
  for (int c = 0; c < 3; ++c)
    for (size_t p = 0; p < size_t(size) * size; ++p)
      pixels[c * size_t(size) * size + p] = (float(resized.rgb[p * 3 + c]) / divisor - float(mean[c])) / float(std_[c]);
  return pixels;
}

std::vector<float> load_pixel_values(const std::string& path, const Manifest& manifest) {
  const int size = int(manifest.integer("image_preprocessing.size"));
  if (path.size() > 4 && path.compare(path.size() - 4, 4, ".f32") == 0) return read_pixels_f32(path, size);
  return preprocess(read_ppm(path), manifest);
}

}  // namespace mobilepeft
