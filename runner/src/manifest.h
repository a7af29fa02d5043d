// manifest.json of a mobilepeft bundle (mobilepeft/export/bundle.schema.json), read by key path.
//
// Every read names its path from the manifest root: segments joined by '.', a segment ending in
// "[]" is an array (the next argument is the index), one ending in "{}" an object with arbitrary
// keys (the next argument is the key). tests/test_app_manifest_keys.py parses these calls in the
// runner's, the Android app's and the iOS app's sources and checks every path against the schema.
#pragma once

#include <initializer_list>
#include <string>
#include <vector>

#include "json.h"

namespace mobilepeft {

struct PathArg {
  PathArg(int i) : index(i) {}
  PathArg(const char* k) : key(k) {}
  PathArg(std::string k) : key(std::move(k)) {}
  int index = -1;
  std::string key;
};
using PathArgs = std::initializer_list<PathArg>;

class Manifest {
 public:
  static Manifest load(const std::string& bundle_dir);  // throws BundleError

  std::string string(const std::string& path, PathArgs args = {}) const;
  long long integer(const std::string& path, PathArgs args = {}) const;
  double number(const std::string& path, PathArgs args = {}) const;
  bool boolean(const std::string& path, PathArgs args = {}) const;
  std::vector<double> numbers(const std::string& path, PathArgs args = {}) const;
  size_t count(const std::string& path, PathArgs args = {}) const;
  bool has(const std::string& path, PathArgs args = {}) const;
  std::vector<std::string> keys(const std::string& path, PathArgs args = {}) const;

  const std::string& dir() const { return dir_; }
  std::string file(const std::string& relative) const { return dir_ + "/" + relative; }
  // Every file of files{} exists with its recorded size (cheap: verify_bundle runs it before hashing).
  void check_files() const;

 private:
  const Json* resolve(const std::string& path, PathArgs args, bool required) const;
  const Json& require(const std::string& path, PathArgs args, Json::Type type) const;
  std::string dir_;
  Json root_;
};

// A bad or incomplete bundle: the message names the file and field and says what to do.
struct BundleError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string read_file(const std::string& path);  // throws BundleError naming the path

}  // namespace mobilepeft
