// SHA-256 (FIPS 180-4), our own: the runner verifies bundle files before it loads them and must
// build with nothing but the compiler, the NDK and ExecuTorch (no OpenSSL on a phone's shell).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace mobilepeft {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  std::string hex_digest();  // lowercase hex, as manifest.json records it; ends the hash

 private:
  void compress(const uint8_t* block);
  uint32_t state_[8];
  uint8_t block_[64];
  size_t block_used_ = 0;
  uint64_t total_bytes_ = 0;
};

// Hex SHA-256 of a file's content, read in 1 MiB blocks; throws std::runtime_error naming the path.
std::string sha256_file(const std::string& path);

// Hex SHA-256 of a string (the stamp file's name: the hash of the bundle's path).
std::string sha256_hex(const std::string& data);

}  // namespace mobilepeft
