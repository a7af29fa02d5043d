#include "json.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace mobilepeft {

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : t_(text) {}

  Json document() {
    Json value = parse_value(0);
    skip_ws();
    if (i_ != t_.size()) fail("trailing characters after the JSON value");
    return value;
  }

 private:
  const std::string& t_;
  size_t i_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("invalid JSON at offset " + std::to_string(i_) + ": " + what);
  }
  void skip_ws() {
    while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\n' || t_[i_] == '\r' || t_[i_] == '\t')) ++i_;
  }
  bool consume(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (t_.compare(i_, n, word) != 0) return false;
    i_ += n;
    return true;
  }

  Json parse_value(int depth) {
    if (depth > 64) fail("nested too deeply");
    skip_ws();
    if (i_ >= t_.size()) fail("unexpected end of input");
    Json v;
    char c = t_[i_];
    if (c == '{') {
      v.type_ = Json::Type::Object;
      ++i_;
      skip_ws();
      if (i_ < t_.size() && t_[i_] == '}') { ++i_; return v; }
      while (true) {
        skip_ws();
        if (i_ >= t_.size() || t_[i_] != '"') fail("expected a string key");
        std::string key = parse_string();
        skip_ws();
        if (i_ >= t_.size() || t_[i_] != ':') fail("expected ':'");
        ++i_;
        v.o_.emplace_back(std::move(key), parse_value(depth + 1));
        skip_ws();
        if (i_ < t_.size() && t_[i_] == ',') { ++i_; continue; }
        if (i_ < t_.size() && t_[i_] == '}') { ++i_; return v; }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.type_ = Json::Type::Array;
      ++i_;
      skip_ws();
      if (i_ < t_.size() && t_[i_] == ']') { ++i_; return v; }
      while (true) {
        v.a_.push_back(parse_value(depth + 1));
        skip_ws();
        if (i_ < t_.size() && t_[i_] == ',') { ++i_; continue; }
        if (i_ < t_.size() && t_[i_] == ']') { ++i_; return v; }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.type_ = Json::Type::String;
      v.s_ = parse_string();
      return v;
    }
    if (consume("true")) { v.type_ = Json::Type::Bool; v.b_ = true; return v; }
    if (consume("false")) { v.type_ = Json::Type::Bool; return v; }
    if (consume("null")) return v;
    if (c == '-' || (c >= '0' && c <= '9')) {
      size_t start = i_;
      if (t_[i_] == '-') ++i_;
      while (i_ < t_.size() && std::string("0123456789.eE+-").find(t_[i_]) != std::string::npos) ++i_;
      std::string number = t_.substr(start, i_ - start);
      char* end = nullptr;
      v.n_ = std::strtod(number.c_str(), &end);
      if (end != number.c_str() + number.size()) { i_ = start; fail("malformed number"); }
      v.type_ = Json::Type::Number;
      v.s_ = number;
      return v;
    }
    fail(std::string("unexpected character '") + c + "'");
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  unsigned hex4() {
    if (i_ + 4 > t_.size()) fail("truncated \\u escape");
    unsigned cp = 0;
    for (int k = 0; k < 4; ++k) {
      char h = t_[i_++];
      cp <<= 4;
      if (h >= '0' && h <= '9') cp |= h - '0';
      else if (h >= 'a' && h <= 'f') cp |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') cp |= h - 'A' + 10;
      else fail("bad hex digit in \\u escape");
    }
    return cp;
  }

  std::string parse_string() {
    ++i_;  // opening quote
    std::string out;
    while (true) {
      if (i_ >= t_.size()) fail("unterminated string");
      char c = t_[i_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (c != '\\') { out += c; continue; }
      if (i_ >= t_.size()) fail("unterminated escape");
      char e = t_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (!consume("\\u")) fail("lone high surrogate");
            unsigned low = hex4();
            if (low < 0xDC00 || low >= 0xE000) fail("bad low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail("unknown escape");
      }
    }
  }
};

Json Json::parse(const std::string& text) { return JsonParser(text).document(); }

const char* Json::type_name() const {
  switch (type_) {
    case Type::Null: return "null";
    case Type::Bool: return "boolean";
    case Type::Number: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "?";
}

long long Json::int64() const {
  if (type_ != Type::Number) throw std::runtime_error(std::string("expected an integer, found a ") + type_name());
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(s_.c_str(), &end, 10);
  if (errno != 0 || end != s_.c_str() + s_.size()) throw std::runtime_error("'" + s_ + "' is not a 64-bit integer");
  return value;
}

const Json* Json::find(const std::string& key) const {
  for (const auto& [k, v] : o_)
    if (k == key) return &v;
  return nullptr;
}

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

void JsonWriter::put(const std::string& key, double value) {
  if (!std::isfinite(value)) throw std::runtime_error("benchmark value " + key + " is not finite");
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.10g", value);
  fields_.emplace_back(key, buf);
}
void JsonWriter::put(const std::string& key, long long value) { fields_.emplace_back(key, std::to_string(value)); }
void JsonWriter::put(const std::string& key, const std::string& value) { fields_.emplace_back(key, json_quote(value)); }
void JsonWriter::put_raw(const std::string& key, const std::string& json) { fields_.emplace_back(key, json); }

std::string JsonWriter::str() const {
  std::string out = "{";
  for (size_t k = 0; k < fields_.size(); ++k) {
    if (k) out += ", ";
    out += json_quote(fields_[k].first) + ": " + fields_[k].second;
  }
  return out + "}";
}

}  // namespace mobilepeft
