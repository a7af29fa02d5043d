// The bundle's .pte through ExecuTorch's C++ Module: the multimodal convention's three methods
// (vision_encoder, token_embedding, text_decoder with its static KV cache inside).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>

#include "adapter.h"
#include "manifest.h"

namespace mobilepeft {

class VlmProgram {
 public:
  // Loads the program and its three methods; a bundle exported with --adapter-as-data gets its
  // adapter file served from an AdapterSlot (adapter()) that swaps adapters in place.
  explicit VlmProgram(const Manifest& manifest);

  AdapterSlot* adapter() { return adapter_.get(); }  // null when the adapter is merged
  const AdapterSlot* adapter() const { return adapter_.get(); }

  double load_ms() const { return load_ms_; }
  int image_tokens() const { return image_tokens_; }

  std::vector<float> encode_image(std::vector<float> pixels);  // [1,3,S,S] -> [P*D]
  std::vector<float> embed(std::vector<int64_t> ids);  // [T] -> [T*D]
  // Runs text_decoder over `embeds` ([T*D]) at positions start.., in calls of at most
  // max_tokens_per_call tokens; returns the logits of the last position.
  std::vector<float> decode(const std::vector<float>& embeds, int64_t start);

 private:
  std::vector<float> run(const std::string& method, const std::vector<executorch::runtime::EValue>& inputs);
  std::unique_ptr<AdapterSlot> adapter_;  // declared before module_: the program points into it
  std::unique_ptr<executorch::extension::module::Module> module_;
  std::string pte_;
  double load_ms_ = 0;
  int hidden_ = 0, image_tokens_ = 0, image_size_ = 0, vocab_ = 0, max_tokens_per_call_ = 1;
};

int argmax(const std::vector<float>& logits);

}  // namespace mobilepeft
