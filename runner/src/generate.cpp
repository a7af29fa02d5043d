#include "generate.h"

#include "image.h"
#include "json.h"

namespace mobilepeft {
namespace {

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}

std::string strip(const std::string& s) {
  const char* ws = " \t\n\r";
  size_t a = s.find_first_not_of(ws);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(ws) - a + 1);
}

// Byte-fallback tokens can end an answer in the middle of a UTF-8 sequence (or a weak model can emit
// stray bytes): invalid sequences become U+FFFD, so the JSON and the apps' strings stay valid UTF-8.
std::string valid_utf8(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = n > 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) >> 6) == 0x2;
    if (ok) {
      out.append(s, i, n);
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

}  // namespace

Generation Generator::generate(const std::string& prompt, const std::string& image_path, int max_new_tokens) {
  const std::string placeholder = manifest_.string("prompt.image_placeholder");
  std::string question = strip(replace_all(prompt, placeholder, ""));
  if (!image_path.empty()) question = placeholder + "\n" + question;
  std::string text = replace_all(manifest_.string("prompt.first_turn"), "{system}", manifest_.string("prompt.system"));
  text = replace_all(text, "{question}", question);

  Generation out;
  const int bos = int(manifest_.integer("tokenizer.bos_id"));
  const int eos = int(manifest_.integer("tokenizer.eos_id"));
  const long long max_seq = manifest_.integer("max_seq_len");
  // The turn's text pieces around the image placeholder(s), tokenised before anything runs so a
  // prompt that cannot fit is refused up front.
  std::vector<std::vector<int>> pieces;
  for (size_t from = 0;;) {
    const size_t at = text.find(placeholder, from);
    std::vector<int> ids = tokenizer_.encode(text.substr(from, at == std::string::npos ? std::string::npos : at - from));
    if (pieces.empty()) ids.insert(ids.begin(), bos);
    pieces.push_back(std::move(ids));
    if (at == std::string::npos) break;
    from = at + placeholder.size();
  }
  if (pieces.size() > 1 && image_path.empty())
    throw BundleError("the prompt template holds an image placeholder but no --image was given");
  long long needed = (long long)(pieces.size() - 1) * program_.image_tokens();
  for (const auto& ids : pieces) needed += (long long)ids.size();
  if (needed >= max_seq)
    throw BundleError("the prompt takes " + std::to_string(needed) + " positions, the bundle's max_seq_len is " +
                      std::to_string(max_seq) + "; shorten the prompt or re-export with a larger --max-seq-len");

  int64_t position = 0;
  std::vector<float> logits;
  for (size_t k = 0; k < pieces.size(); ++k) {
    if (k) {
      logits = program_.decode(program_.encode_image(load_pixel_values(image_path, manifest_)), position);
      position += program_.image_tokens();
    }
    if (pieces[k].empty()) continue;
    out.prompt_tokens.insert(out.prompt_tokens.end(), pieces[k].begin(), pieces[k].end());
    logits = program_.decode(program_.embed(std::vector<int64_t>(pieces[k].begin(), pieces[k].end())), position);
    position += int64_t(pieces[k].size());
  }
  out.num_prompt_positions = int(position);
  for (int k = 0; k < max_new_tokens && position < max_seq; ++k) {
    const int token = argmax(logits);
    if (token == eos) break;
    out.tokens.push_back(token);
    out.pieces.push_back(valid_utf8(tokenizer_.piece_text(token)));
    if (k + 1 == max_new_tokens || position + 1 >= max_seq) break;
    logits = program_.decode(program_.embed({token}), position++);
  }
  std::string joined;
  for (const int token : out.tokens) joined += tokenizer_.piece_text(token);
  joined = strip(valid_utf8(joined));
  const std::string stop = manifest_.string("prompt.stop");
  if (!stop.empty() && joined.size() >= stop.size() && joined.compare(joined.size() - stop.size(), stop.size(), stop) == 0)
    joined = strip(joined.substr(0, joined.size() - stop.size()));
  out.text = joined;
  return out;
}

std::string Generation::to_json() const {
  auto ints = [](const std::vector<int>& v) {
    std::string s = "[";
    for (size_t k = 0; k < v.size(); ++k) s += (k ? ", " : "") + std::to_string(v[k]);
    return s + "]";
  };
  std::string pieces_json = "[";
  for (size_t k = 0; k < pieces.size(); ++k) pieces_json += (k ? ", " : "") + json_quote(pieces[k]);
  pieces_json += "]";
  JsonWriter w;
  w.put("text", text);
  w.put_raw("tokens", ints(tokens));
  w.put_raw("pieces", pieces_json);
  w.put_raw("prompt_tokens", ints(prompt_tokens));
  w.put("num_prompt_positions", num_prompt_positions);
  w.put("num_generated_tokens", int(tokens.size()));
  return w.str();
}

}  // namespace mobilepeft
