// Image -> pixel_values exactly as the bundle's image_preprocessing says (MobileVLM's "pad" mode):
// letterbox onto a square of pad_color, resize the short side to `size` with PIL's bicubic
// filter (same fixed-point arithmetic, so the pixels equal the host's), centre-crop, rescale,
// normalise, NCHW float32.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "manifest.h"

namespace mobilepeft {

struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // row-major, 3 bytes a pixel
};

// Binary PPM (P6, maxval 255): `convert photo.jpg photo.ppm`, or PIL's `image.save("x.ppm")`.
RgbImage read_ppm(const std::string& path);
// Raw float32 pixel_values [1,3,size,size], already preprocessed (e.g. by `mobilepeft` on the host).
std::vector<float> read_pixels_f32(const std::string& path, int size);

RgbImage resize_bicubic(const RgbImage& in, int width, int height);
std::vector<float> preprocess(const RgbImage& image, const Manifest& manifest);

// --image: a .ppm is preprocessed here, a .f32 is taken as it is.
std::vector<float> load_pixel_values(const std::string& path, const Manifest& manifest);

}  // namespace mobilepeft
