#include "sentencepiece.h"

#include <cstdint>
#include <cstring>

#include "manifest.h"

namespace mobilepeft {
namespace {

const std::string kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

// Protobuf wire format, just what ModelProto needs.
class Wire {
 public:
  Wire(const char* data, size_t size, const std::string& file) : p_(data), end_(data + size), file_(file) {}
  bool done() const { return p_ >= end_; }
  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) bad();
      uint8_t byte = static_cast<uint8_t>(*p_++);
      value |= uint64_t(byte & 0x7F) << shift;
      if (!(byte & 0x80)) return value;
    }
    bad();
  }
  Wire bytes(std::string* copy = nullptr) {
    uint64_t n = varint();
    if (n > uint64_t(end_ - p_)) bad();
    Wire sub(p_, n, file_);
    if (copy) copy->assign(p_, n);
    p_ += n;
    return sub;
  }
  float fixed32() {
    if (end_ - p_ < 4) bad();
    float f;
    std::memcpy(&f, p_, 4);  // little-endian on every target we build for
    p_ += 4;
    return f;
  }
  void skip(int wire_type) {
    switch (wire_type) {
      case 0: varint(); break;
      case 1: if (end_ - p_ < 8) bad(); p_ += 8; break;
      case 2: bytes(); break;
      case 5: if (end_ - p_ < 4) bad(); p_ += 4; break;
      default: bad();
    }
  }
  [[noreturn]] void bad() const {
    throw BundleError(file_ + ": not a SentencePiece model (malformed protobuf); copy tokenizer.model from the bundle again");
  }

 private:
  const char* p_;
  const char* end_;
  std::string file_;
};

size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;  // stray continuation byte: a symbol of its own (goes to byte fallback)
}

}  // namespace

SentencePieceBpe SentencePieceBpe::load(const std::string& path) {
  const std::string data = read_file(path);
  SentencePieceBpe sp;
  std::string normalizer = "nmt_nfkc";  // SentencePiece's default when the field is absent
  bool has_charsmap = false;
  int model_type = 1;  // UNIGRAM is the protobuf default
  Wire model(data.data(), data.size(), path);
  while (!model.done()) {
    uint64_t tag = model.varint();
    int field = int(tag >> 3), wire_type = int(tag & 7);
    if (field == 1 && wire_type == 2) {
      Wire msg = model.bytes();
      Piece piece;
      while (!msg.done()) {
        uint64_t t = msg.varint();
        if ((t >> 3) == 1 && (t & 7) == 2) msg.bytes(&piece.text);
        else if ((t >> 3) == 2 && (t & 7) == 5) piece.score = msg.fixed32();
        else if ((t >> 3) == 3 && (t & 7) == 0) piece.type = int(msg.varint());
        else msg.skip(int(t & 7));
      }
      sp.pieces_.push_back(std::move(piece));
    } else if (field == 2 && wire_type == 2) {  // TrainerSpec
      Wire msg = model.bytes();
      while (!msg.done()) {
        uint64_t t = msg.varint();
        if ((t >> 3) == 3 && (t & 7) == 0) model_type = int(msg.varint());
        else if ((t >> 3) == 35 && (t & 7) == 0) sp.byte_fallback_ = msg.varint() != 0;
        else msg.skip(int(t & 7));
      }
    } else if (field == 3 && wire_type == 2) {  // NormalizerSpec
      Wire msg = model.bytes();
      while (!msg.done()) {
        uint64_t t = msg.varint();
        int f = int(t >> 3);
        if (f == 1 && (t & 7) == 2) msg.bytes(&normalizer);
        else if (f == 2 && (t & 7) == 2) { std::string map; msg.bytes(&map); has_charsmap = !map.empty(); }
        else if (f == 3 && (t & 7) == 0) sp.add_dummy_prefix_ = msg.varint() != 0;
        else if (f == 4 && (t & 7) == 0) sp.remove_extra_whitespaces_ = msg.varint() != 0;
        else if (f == 5 && (t & 7) == 0) sp.escape_whitespaces_ = msg.varint() != 0;
        else msg.skip(int(t & 7));
      }
    } else {
      model.skip(wire_type);
    }
  }
  if (model_type != 2)
    throw BundleError(path + ": SentencePiece model_type " + std::to_string(model_type) +
                      " is not BPE; the native tokenizer implements LLaMA's BPE tokenizer");
  if (normalizer != "identity" || has_charsmap)
    throw BundleError(path + ": normalizer '" + normalizer + "' is not supported (LLaMA and MobileVLM use "
                      "'identity'); re-train the tokenizer with normalization_rule_name=identity");
  if (sp.pieces_.empty()) throw BundleError(path + ": the SentencePiece model has no pieces");
  std::fill(std::begin(sp.byte_ids_), std::end(sp.byte_ids_), -1);
  for (int id = 0; id < sp.size(); ++id) {
    const Piece& p = sp.pieces_[id];
    if (p.type == NORMAL || p.type == USER_DEFINED) sp.mergeable_.emplace(p.text, id);
    if (p.type == USER_DEFINED) sp.user_defined_.push_back(p.text);
    if (p.type == UNKNOWN) sp.unk_id_ = id;
    if (p.type == BYTE && p.text.size() == 6 && p.text.compare(0, 3, "<0x") == 0)
      sp.byte_ids_[std::stoi(p.text.substr(3, 2), nullptr, 16)] = id;
  }
  return sp;
}

std::vector<int> SentencePieceBpe::encode(const std::string& raw) const {
  std::string text = raw;
  if (remove_extra_whitespaces_) {
    std::string collapsed;
    for (char c : text) {
      if (c == ' ' && (collapsed.empty() || collapsed.back() == ' ')) continue;
      collapsed += c;
    }
    while (!collapsed.empty() && collapsed.back() == ' ') collapsed.pop_back();
    text = collapsed;
  }
  if (text.empty()) return {};
  std::string normalized = add_dummy_prefix_ ? (escape_whitespaces_ ? kSpace : " ") : "";
  for (char c : text) {
    if (c == ' ' && escape_whitespaces_) normalized += kSpace;
    else normalized += c;
  }

  // Initial symbols: user-defined pieces (longest match) as whole symbols, else one code point.
  std::vector<std::string> symbols;
  for (size_t i = 0; i < normalized.size();) {
    size_t best = 0;
    for (const std::string& u : user_defined_)
      if (u.size() > best && normalized.compare(i, u.size(), u) == 0) best = u.size();
    size_t n = best ? best : std::min(utf8_length(static_cast<unsigned char>(normalized[i])), normalized.size() - i);
    symbols.push_back(normalized.substr(i, n));
    i += n;
  }
  // Merge the adjacent pair whose concatenation is the highest-scoring piece (leftmost on ties).
  while (symbols.size() > 1) {
    int best = -1;
    float best_score = 0;
    for (size_t k = 0; k + 1 < symbols.size(); ++k) {
      auto it = mergeable_.find(symbols[k] + symbols[k + 1]);
      if (it == mergeable_.end()) continue;
      float score = pieces_[it->second].score;
      if (best < 0 || score > best_score) { best = int(k); best_score = score; }
    }
    if (best < 0) break;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + best + 1);
  }
  std::vector<int> ids;
  for (const std::string& s : symbols) {
    auto it = mergeable_.find(s);
    if (it != mergeable_.end()) { ids.push_back(it->second); continue; }
    if (!byte_fallback_) { ids.push_back(unk_id_); continue; }
    for (unsigned char byte : s) ids.push_back(byte_ids_[byte] >= 0 ? byte_ids_[byte] : unk_id_);
  }
  return ids;
}

std::string SentencePieceBpe::piece_text(int id) const {
  if (id < 0 || id >= size()) return "";
  const Piece& p = pieces_[id];
  if (p.type == CONTROL || p.type == UNKNOWN || p.type == UNUSED) return p.type == UNKNOWN ? " \xE2\x81\x87 " : "";
  if (p.type == BYTE) return std::string(1, static_cast<char>(std::stoi(p.text.substr(3, 2), nullptr, 16)));
  std::string out;
  for (size_t i = 0; i < p.text.size();) {
    if (p.text.compare(i, kSpace.size(), kSpace) == 0) { out += ' '; i += kSpace.size(); }
    else out += p.text[i++];
  }
  return out;
}


}  // namespace mobilepeft
