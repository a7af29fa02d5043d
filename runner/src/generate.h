// Greedy generation in a fresh conversation, fed exactly as ExecuTorch's MultimodalRunner is fed
// by the host (mobilepeft/export/executorch/runner.py): the manifest's first_turn, split at the image placeholder,
// each text piece tokenised on its own (BOS before the first) and prefilled in turn, the image's
// tokens between them; then one token at a time until EOS or the token budget.
#pragma once

#include <string>
#include <vector>

#include "manifest.h"
#include "sentencepiece.h"
#include "vlm_program.h"

namespace mobilepeft {

struct Generation {
  std::string text;  // the answer: pieces joined, stop string and surrounding spaces removed
  std::vector<int> tokens;  // generated ids, EOS excluded
  std::vector<std::string> pieces;  // each token's decoded text
  std::vector<int> prompt_tokens;  // the text ids prefilled (image positions not included)
  int num_prompt_positions = 0;  // KV positions the prompt took, image tokens included
  std::string to_json() const;
};

class Generator {
 public:
  Generator(VlmProgram& program, const SentencePieceBpe& tokenizer, const Manifest& manifest)
      : program_(program), tokenizer_(tokenizer), manifest_(manifest) {}

  Generation generate(const std::string& prompt, const std::string& image_path, int max_new_tokens);

 private:
  VlmProgram& program_;
  const SentencePieceBpe& tokenizer_;
  const Manifest& manifest_;
};

}  // namespace mobilepeft
