// LLaMA's tokenizer: a SentencePiece BPE model (tokenizer.model) with byte fallback, read and run
// without the sentencepiece library so the runner needs nothing beyond ExecuTorch on a phone.
//
// Supported: model_type BPE, the "identity" normaliser (LLaMA's, so MobileVLM's), dummy prefix,
// whitespace escaping, optional extra-whitespace removal, user-defined pieces, byte fallback.
// Anything else is refused with a message, never tokenised differently from the host.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

namespace mobilepeft {

class SentencePieceBpe {
 public:
  static SentencePieceBpe load(const std::string& path);  // throws BundleError

  std::vector<int> encode(const std::string& text) const;  // no BOS/EOS
  std::string piece_text(int id) const;  // the bytes one token contributes when decoding
  int size() const { return static_cast<int>(pieces_.size()); }

 private:
  enum Type { NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6 };
  struct Piece {
    std::string text;
    float score = 0;
    int type = NORMAL;
  };
  std::vector<Piece> pieces_;
  std::unordered_map<std::string, int> mergeable_;  // NORMAL and USER_DEFINED pieces by text
  std::vector<std::string> user_defined_;
  int byte_ids_[256];
  int unk_id_ = 0;
  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = true;
  bool escape_whitespaces_ = true;
  bool byte_fallback_ = false;
};

}  // namespace mobilepeft
