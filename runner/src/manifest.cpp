#include "manifest.h"

#include <fstream>
#include <sstream>
#include <sys/stat.h>

namespace mobilepeft {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw BundleError(path + ": cannot open the file");
  std::ostringstream data;
  data << in.rdbuf();
  return data.str();
}

Manifest Manifest::load(const std::string& bundle_dir) {
  Manifest m;
  m.dir_ = bundle_dir;
  const std::string path = m.file("manifest.json");
  try {
    m.root_ = Json::parse(read_file(path));
  } catch (const std::runtime_error& e) {
    throw BundleError(path + ": " + e.what() + " (re-export the bundle with `mobilepeft export`)");
  }
  if (!m.root_.is(Json::Type::Object) || m.string("format") != "mobilepeft-bundle")
    throw BundleError(path + ": not a mobilepeft bundle manifest (field format)");
  if (m.integer("manifest_version") != 1)
    throw BundleError(path + ": manifest_version " + std::to_string(m.integer("manifest_version")) +
                      " is not 1; re-export the bundle with the mobilepeft this runner ships with");
  return m;
}

const Json* Manifest::resolve(const std::string& path, PathArgs args, bool required) const {
  const Json* node = &root_;
  auto arg = args.begin();
  size_t start = 0;
  std::string walked;
  while (start <= path.size()) {
    size_t dot = path.find('.', start);
    std::string segment = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    start = dot == std::string::npos ? path.size() + 1 : dot + 1;
    bool array = segment.size() > 2 && segment.compare(segment.size() - 2, 2, "[]") == 0;
    bool map = segment.size() > 2 && segment.compare(segment.size() - 2, 2, "{}") == 0;
    std::string name = array || map ? segment.substr(0, segment.size() - 2) : segment;
    walked += (walked.empty() ? "" : ".") + name;
    node = node->find(name);
    if (node == nullptr) {
      if (!required) return nullptr;
      throw BundleError(file("manifest.json") + ": missing field " + walked +
                        " (re-export the bundle with `mobilepeft export`)");
    }
    bool last = start > path.size();
    if ((array || map) && (!last || arg != args.end())) {
      if (arg == args.end()) throw std::logic_error("manifest path " + path + " needs an argument for " + segment);
      if (array) {
        if (!node->is(Json::Type::Array) || arg->index < 0 || size_t(arg->index) >= node->items().size()) {
          if (!required) return nullptr;
          throw BundleError(file("manifest.json") + ": " + walked + " has no item " + std::to_string(arg->index));
        }
        walked += "[" + std::to_string(arg->index) + "]";
        node = &node->items()[arg->index];
      } else {
        walked += "." + arg->key;
        node = node->find(arg->key);
        if (node == nullptr) {
          if (!required) return nullptr;
          throw BundleError(file("manifest.json") + ": missing field " + walked);
        }
      }
      ++arg;
    }
  }
  return node;
}

const Json& Manifest::require(const std::string& path, PathArgs args, Json::Type type) const {
  const Json& node = *resolve(path, args, true);
  if (!node.is(type))
    throw BundleError(file("manifest.json") + ": field " + path + " is a " + node.type_name() +
                      ", the bundle schema says otherwise (re-export the bundle)");
  return node;
}

std::string Manifest::string(const std::string& path, PathArgs args) const {
  return require(path, args, Json::Type::String).str();
}
double Manifest::number(const std::string& path, PathArgs args) const {
  return require(path, args, Json::Type::Number).number();
}
bool Manifest::boolean(const std::string& path, PathArgs args) const {
  return require(path, args, Json::Type::Bool).boolean();
}
long long Manifest::integer(const std::string& path, PathArgs args) const {
  return static_cast<long long>(number(path, args));
}
std::vector<double> Manifest::numbers(const std::string& path, PathArgs args) const {
  std::vector<double> out;
  for (const Json& item : require(path, args, Json::Type::Array).items()) {
    if (!item.is(Json::Type::Number)) throw BundleError(file("manifest.json") + ": field " + path + " holds a non-number");
    out.push_back(item.number());
  }
  return out;
}
size_t Manifest::count(const std::string& path, PathArgs args) const {
  const Json& node = *resolve(path, args, true);
  if (!node.is(Json::Type::Array) && !node.is(Json::Type::Object))
    throw BundleError(file("manifest.json") + ": field " + path + " is a " + node.type_name() + ", not a list");
  return node.is(Json::Type::Array) ? node.items().size() : node.members().size();
}
bool Manifest::has(const std::string& path, PathArgs args) const { return resolve(path, args, false) != nullptr; }
std::vector<std::string> Manifest::keys(const std::string& path, PathArgs args) const {
  std::vector<std::string> out;
  for (const auto& member : require(path, args, Json::Type::Object).members()) out.push_back(member.first);
  return out;
}

void Manifest::check_files() const {
  for (const std::string& name : keys("files{}")) {
    struct stat st {};
    const std::string path = file(name);
    if (stat(path.c_str(), &st) != 0)
      throw BundleError(path + ": listed in manifest.json (files) but missing; copy the whole bundle directory");
    long long expected = integer("files{}.bytes", {name});
    if (st.st_size != expected)
      throw BundleError(path + ": " + std::to_string(st.st_size) + " bytes, manifest.json records " +
                        std::to_string(expected) + " (truncated copy? copy the bundle again)");
  }
}

}  // namespace mobilepeft
