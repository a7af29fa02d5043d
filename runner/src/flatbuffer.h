// A bounds-checked reader of FlatBuffers tables (little-endian), enough to read ONNX Runtime's
// training checkpoint without linking ONNX Runtime: fields by index through the table's vtable.
// Every access checks that it stays inside the buffer and throws std::out_of_range otherwise.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace mobilepeft::fb {

class Table {
 public:
  Table(const uint8_t* data, size_t size, size_t pos) : data_(data), size_(size), pos_(pos) {
    vtable_ = pos_ - size_t(int64_t(read<int32_t>(pos_)));
    vtable_len_ = read<uint16_t>(vtable_);
  }
  static Table root(const std::vector<uint8_t>& buffer) {
    if (buffer.size() < 8) throw std::out_of_range("buffer too short for a flatbuffer");
    Table probe(buffer.data(), buffer.size());
    return Table(buffer.data(), buffer.size(), probe.read<uint32_t>(0));
  }

  bool has(int field) const { return offset(field) != 0; }
  template <typename T>
  T scalar(int field, T fallback) const {
    const size_t at = offset(field);
    return at ? read<T>(at) : fallback;
  }
  std::string string(int field) const {
    const size_t at = target(field);
    if (!at) return "";
    const uint32_t n = read<uint32_t>(at);
    check(at + 4, n);
    return std::string(reinterpret_cast<const char*>(data_ + at + 4), n);
  }
  Table table(int field) const { return Table(data_, size_, require(field)); }
  size_t vector_length(int field) const { return target(field) ? read<uint32_t>(target(field)) : 0; }
  Table table_at(int field, size_t i) const {
    const size_t element = require(field) + 4 + 4 * i;
    return Table(data_, size_, element + read<uint32_t>(element));
  }
  template <typename T>
  std::vector<T> scalars(int field) const {
    const size_t at = target(field);
    if (!at) return {};
    const uint32_t n = read<uint32_t>(at);
    check(at + 4, size_t(n) * sizeof(T));
    std::vector<T> out(n);
    std::memcpy(out.data(), data_ + at + 4, size_t(n) * sizeof(T));
    return out;
  }
  // Bytes of a [ubyte] vector: pointer and length, no copy.
  std::pair<const uint8_t*, size_t> bytes(int field) const {
    const size_t at = target(field);
    if (!at) return {nullptr, 0};
    const uint32_t n = read<uint32_t>(at);
    check(at + 4, n);
    return {data_ + at + 4, n};
  }

 private:
  Table(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  void check(size_t at, size_t n) const {
    if (at > size_ || n > size_ - at) throw std::out_of_range("flatbuffer offset out of range");
  }
  template <typename T>
  T read(size_t at) const {
    check(at, sizeof(T));
    T v;
    std::memcpy(&v, data_ + at, sizeof(T));
    return v;
  }
  size_t offset(int field) const {
    const size_t slot = 4 + 2 * size_t(field);
    if (slot + 2 > vtable_len_) return 0;
    const uint16_t rel = read<uint16_t>(vtable_ + slot);
    return rel ? pos_ + rel : 0;
  }
  size_t target(int field) const {
    const size_t at = offset(field);
    return at ? at + read<uint32_t>(at) : 0;
  }
  size_t require(int field) const {
    const size_t at = target(field);
    if (!at) throw std::out_of_range("flatbuffer field " + std::to_string(field) + " is absent");
    return at;
  }
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0, vtable_ = 0;
  uint16_t vtable_len_ = 0;
};

}  // namespace mobilepeft::fb
