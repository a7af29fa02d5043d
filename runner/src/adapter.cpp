#include "adapter.h"

#include <algorithm>
#include <cstring>

#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/flat_tensor/flat_tensor_data_map.h>

#include "sha256.h"

namespace mobilepeft {

using executorch::aten::ScalarType;
using executorch::extension::BufferDataLoader;
using executorch::extension::FlatTensorDataMap;

namespace {

const char* kHint = "; write adapter files for this bundle with `mobilepeft adapter to-ptd`, "
                    "`mobilepeft_runner adapter-import` or the app's writer";

std::vector<uint8_t> read_bytes(const std::string& path) {
  const std::string text = read_file(path);
  return std::vector<uint8_t>(text.begin(), text.end());
}

std::string head_digest(const std::vector<uint8_t>& data, size_t head_bytes) {
  Sha256 hash;
  hash.update(data.data(), std::min(head_bytes, data.size()));
  return hash.hex_digest();
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t k = 0; k < shape.size(); ++k) s += (k ? ", " : "") + std::to_string(shape[k]);
  return s + "]";
}

// The bundle's own adapter file, checked to have the layout its manifest states.
std::vector<uint8_t> read_bundle_adapter(const AdapterLayout& layout) {
  std::vector<uint8_t> data = read_bytes(layout.default_file);
  if (data.size() != layout.file_bytes || head_digest(data, layout.head_bytes) != layout.head_sha256)
    throw BundleError(layout.default_file + ": the bundle's adapter file does not have the layout its manifest states "
                      "(size or head SHA-256); restore it with `mobilepeft adapter to-ptd` or re-export the bundle");
  return data;
}

}  // namespace

AdapterLayout AdapterLayout::read(const Manifest& m) {
  AdapterLayout layout;
  layout.default_file = m.file(m.string("executorch.adapter.file"));
  layout.file_bytes = size_t(m.integer("executorch.adapter.bytes"));
  layout.head_bytes = size_t(m.integer("executorch.adapter.head_bytes"));
  layout.head_sha256 = m.string("executorch.adapter.head_sha256");
  const size_t n = m.count("executorch.adapter.tensors[]");
  for (size_t i = 0; i < n; ++i) {
    const int k = int(i);
    AdapterTensor t;
    t.key = m.string("executorch.adapter.tensors[].key", {k});
    t.adapter_key = m.string("executorch.adapter.tensors[].adapter_key", {k});
    for (double d : m.numbers("executorch.adapter.tensors[].shape", {k})) t.shape.push_back(int64_t(d));
    t.offset = size_t(m.integer("executorch.adapter.tensors[].offset", {k}));
    t.bytes = size_t(m.integer("executorch.adapter.tensors[].bytes", {k}));
    t.transposed = m.boolean("executorch.adapter.tensors[].transposed", {k});
    if (t.offset + t.bytes > layout.file_bytes)
      throw BundleError(m.file("manifest.json") + ": executorch.adapter.tensors[" + std::to_string(i) +
                        "] lies past the end of the adapter file; re-export the bundle");
    layout.tensors.push_back(std::move(t));
  }
  return layout;
}

std::vector<const uint8_t*> check_adapter_file(const AdapterLayout& layout, const std::string& path,
                                               const std::vector<uint8_t>& data) {
  BufferDataLoader loader(data.data(), data.size());
  auto map = FlatTensorDataMap::load(&loader);
  if (!map.ok())
    throw BundleError(path + ": not an ExecuTorch FlatTensor data file (.ptd), or truncated (ExecuTorch error " +
                      std::to_string(int(map.error())) + ")" + kHint);
  auto keys = map->get_num_keys();
  if (!keys.ok() || size_t(keys.get()) != layout.tensors.size()) {
    // Name a tensor the bundle does not know, if that is what is wrong.
    for (uint32_t i = 0; keys.ok() && i < keys.get(); ++i) {
      auto key = map->get_key(i);
      if (!key.ok()) break;
      bool known = false;
      for (const auto& t : layout.tensors) known = known || t.key == key.get();
      if (!known) throw BundleError(path + ": adapter tensor '" + std::string(key.get()) + "' is not in the bundle's manifest" + kHint);
    }
  }
  std::vector<const uint8_t*> found;
  for (const auto& t : layout.tensors) {
    auto info = map->get_tensor_layout(t.key);
    if (!info.ok()) throw BundleError(path + ": adapter tensor '" + t.key + "' (" + t.adapter_key + ") is missing" + kHint);
    std::vector<int64_t> shape(info->sizes().begin(), info->sizes().end());
    if (info->scalar_type() != ScalarType::Float || shape != t.shape)
      throw BundleError(path + ": adapter tensor '" + t.key + "' is " +
                        (info->scalar_type() == ScalarType::Float ? "float32 " : "not float32, ") + shape_text(shape) +
                        ", the bundle expects float32 " + shape_text(t.shape) + " (another rank or another model?)" + kHint);
    auto buffer = map->get_data(t.key);
    if (!buffer.ok() || buffer->size() != t.bytes)
      throw BundleError(path + ": adapter tensor '" + t.key + "' has no complete data (truncated file?)" + kHint);
    found.push_back(static_cast<const uint8_t*>(buffer->data()));
  }
  if (keys.ok() && size_t(keys.get()) != layout.tensors.size())
    throw BundleError(path + ": " + std::to_string(keys.get()) + " tensors, the bundle's adapter has " +
                      std::to_string(layout.tensors.size()) + kHint);
  return found;
}

AdapterSlot::AdapterSlot(const Manifest& manifest) : layout_(AdapterLayout::read(manifest)) {
  buffer_ = read_bundle_adapter(layout_);
  check_adapter_file(layout_, layout_.default_file, buffer_);
  active_ = layout_.default_file;
}

std::unique_ptr<executorch::runtime::DataLoader> AdapterSlot::loader() const {
  return std::make_unique<BufferDataLoader>(buffer_.data(), buffer_.size());
}

void AdapterSlot::swap(const std::string& path) {
  const std::vector<uint8_t> data = read_bytes(path);
  const std::vector<const uint8_t*> sources = check_adapter_file(layout_, path, data);  // throws: nothing changed
  for (size_t i = 0; i < layout_.tensors.size(); ++i)
    std::memcpy(buffer_.data() + layout_.tensors[i].offset, sources[i], layout_.tensors[i].bytes);
  active_ = path;
}

namespace {
// The decoder layer a PEFT tensor name belongs to (`...layers.7.self_attn...` -> 7), or -1.
int decoder_layer(const std::string& key) {
  const std::string marker = ".layers.";
  const size_t at = key.find(marker);
  if (at == std::string::npos) return -1;
  size_t end = at + marker.size();
  int layer = 0;
  bool digits = false;
  for (; end < key.size() && key[end] >= '0' && key[end] <= '9'; ++end, digits = true) layer = layer * 10 + (key[end] - '0');
  return digits ? layer : -1;
}
}  // namespace

std::vector<uint8_t> adapter_file_bytes(const AdapterLayout& layout, const Manifest& manifest,
                                        const std::map<std::string, std::vector<float>>& tensors, int frozen_layers) {
  std::vector<uint8_t> file = read_bundle_adapter(layout);
  for (const auto& t : layout.tensors) {
    auto it = tensors.find(t.adapter_key);
    const int layer = decoder_layer(t.adapter_key);
    if (it == tensors.end() && layer >= 0 && layer < frozen_layers)
      continue;  // below the layers the phone trains: the bundle's own values stay
    if (it == tensors.end())
      throw BundleError("no trained tensor '" + t.adapter_key + "' for adapter tensor '" + t.key +
                        "': the training state must come from this bundle's adapter (" + manifest.dir() + ")");
    if (it->second.size() * sizeof(float) != t.bytes || t.shape.size() != 2)
      throw BundleError("trained tensor '" + t.adapter_key + "' has " + std::to_string(it->second.size()) +
                        " values; the bundle stores '" + t.key + "' as " + shape_text(t.shape));
    float* dst = reinterpret_cast<float*>(file.data() + t.offset);
    const std::vector<float>& src = it->second;
    const size_t rows = size_t(t.shape[0]), cols = size_t(t.shape[1]);
    if (t.transposed) {  // stored [rows, cols] = trained [cols, rows]ᵀ
      for (size_t r = 0; r < rows; ++r)
        for (size_t c = 0; c < cols; ++c) dst[r * cols + c] = src[c * rows + r];
    } else {
      std::memcpy(dst, src.data(), t.bytes);
    }
  }
  return file;
}

}  // namespace mobilepeft
