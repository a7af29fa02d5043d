// A small, strict JSON reader/writer: enough for manifest.json and the benchmark JSON, with no
// third-party dependency (the runner must cross-compile with nothing but the NDK and ExecuTorch).
#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace mobilepeft {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Json() = default;
  static Json parse(const std::string& text);  // throws std::runtime_error naming the offset

  Type type() const { return type_; }
  const char* type_name() const;
  bool is(Type t) const { return type_ == t; }

  bool boolean() const { return b_; }
  double number() const { return n_; }
  // The number as a 64-bit integer, exactly: number() is a double, which rounds integers beyond
  // 2^53 (nanosecond timestamps). Throws std::runtime_error unless it is an integer that fits.
  long long int64() const;
  const std::string& str() const { return s_; }
  const std::vector<Json>& items() const { return a_; }
  const std::vector<std::pair<std::string, Json>>& members() const { return o_; }
  const Json* find(const std::string& key) const;  // nullptr when absent (or not an object)

 private:
  friend class JsonParser;
  Type type_ = Type::Null;
  bool b_ = false;
  double n_ = 0;
  std::string s_;  // a string's value, or a number's text as written (for int64())
  std::vector<Json> a_;
  std::vector<std::pair<std::string, Json>> o_;
};

// Writes one flat JSON object, keys in insertion order (the benchmark result).
class JsonWriter {
 public:
  void put(const std::string& key, double value);
  void put(const std::string& key, long long value);
  void put(const std::string& key, int value) { put(key, static_cast<long long>(value)); }
  void put(const std::string& key, const std::string& value);
  void put(const std::string& key, const char* value) { put(key, std::string(value)); }
  void put_raw(const std::string& key, const std::string& json);  // an already-encoded value
  std::string str() const;

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

std::string json_quote(const std::string& s);

}  // namespace mobilepeft
