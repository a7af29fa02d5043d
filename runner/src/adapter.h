// The adapter kept as data (docs/on-device-loop.md): a bundle exported with --adapter-as-data keeps
// the LLM's LoRA tensors in adapter.ptd, ExecuTorch's FlatTensor file, read by ExecuTorch's own
// kernels through the pointers the program gets at load. AdapterSlot serves that file from one
// buffer it owns, so swapping adapters is: check the new file against the manifest (every tensor's
// name, dtype and shape, with ExecuTorch's own FlatTensor reader), then copy its tensors over the
// live ones. The base weights (in the .pte, packed by XNNPACK once) are never reloaded. A refused
// file changes nothing.
//
// adapter_file_bytes is the phone-side writer: trained tensors (as ONNX Runtime hands them out,
// keyed by the PEFT name, A [r,in] and B [out,r]) into a new adapter file with the bundle's layout.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <executorch/runtime/core/data_loader.h>

#include "manifest.h"

namespace mobilepeft {

struct AdapterTensor {
  std::string key;  // name in the .ptd
  std::string adapter_key;  // PEFT / ONNX Runtime bundle name of the trained tensor
  std::vector<int64_t> shape;  // as stored
  size_t offset = 0, bytes = 0;  // in the bundle's layout
  bool transposed = false;  // stored as the transpose of the trained tensor
};

struct AdapterLayout {
  static bool present(const Manifest& manifest) { return manifest.has("executorch.adapter"); }
  static AdapterLayout read(const Manifest& manifest);

  std::string default_file;  // the bundle's own adapter.ptd
  size_t file_bytes = 0, head_bytes = 0;
  std::string head_sha256;
  std::vector<AdapterTensor> tensors;
};

class AdapterSlot {
 public:
  explicit AdapterSlot(const Manifest& manifest);  // holds the bundle's adapter.ptd

  // A DataLoader over the live buffer, for ExecuTorch's Module (its .ptd): no copy is made.
  std::unique_ptr<executorch::runtime::DataLoader> loader() const;
  // Replace the live tensors with those of `path`; throws BundleError naming the tensor that does
  // not fit (the live adapter is then unchanged).
  void swap(const std::string& path);
  const std::string& active() const { return active_; }
  size_t bytes() const { return buffer_.size(); }

 private:
  AdapterLayout layout_;
  std::vector<uint8_t> buffer_;  // never reallocated after construction: the program points into it
  std::string active_;
};

// Check `data` (the contents of `path`) against the layout; returns each tensor's bytes within it.
std::vector<const uint8_t*> check_adapter_file(const AdapterLayout& layout, const std::string& path,
                                               const std::vector<uint8_t>& data);

// A new adapter file: the bundle's head with `tensors` (by adapter_key, float32, in the trained
// layout) placed, transposed where the layout says so. Tensors of decoder layers below
// `frozen_layers` (an ORT bundle that trains only the top layers) may be absent: they keep the
// bundle's own values.
std::vector<uint8_t> adapter_file_bytes(const AdapterLayout& layout, const Manifest& manifest,
                                        const std::map<std::string, std::vector<float>>& tensors,
                                        int frozen_layers = 0);

}  // namespace mobilepeft
