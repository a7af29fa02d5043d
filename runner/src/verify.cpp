#include "verify.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <stdexcept>

#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "sha256.h"

namespace mobilepeft {

namespace {

const long long kSettleNs = 2'000'000'000LL;  // a file changed this recently is hashed every time

// What stat() says about one version of a file. Any write changes ctime; a replacement changes the
// inode (unique per device).
struct FileIdentity {
  long long bytes = 0;
  long long mtime_ns = 0;
  long long ctime_ns = 0;
  long long inode = 0;
  long long device = 0;

  bool operator==(const FileIdentity& other) const {
    return bytes == other.bytes && mtime_ns == other.mtime_ns && ctime_ns == other.ctime_ns && inode == other.inode &&
           device == other.device;
  }
};

struct StampEntry {
  std::string sha256;  // the manifest's, which the file's content matched
  FileIdentity identity;  // taken before hashing, so a write during the hash makes it stale
};
using Stamp = std::map<std::string, StampEntry>;  // by the file's path relative to the bundle

long long nanoseconds(const struct timespec& t) { return static_cast<long long>(t.tv_sec) * 1'000'000'000LL + t.tv_nsec; }

long long now_ns() {
  struct timespec now {};
  clock_gettime(CLOCK_REALTIME, &now);  // the clock file timestamps come from
  return nanoseconds(now);
}

bool stat_identity(const std::string& path, FileIdentity* out) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return false;
  out->bytes = st.st_size;
  out->mtime_ns = nanoseconds(st.st_mtim);
  out->ctime_ns = nanoseconds(st.st_ctim);
  out->inode = static_cast<long long>(st.st_ino);
  out->device = static_cast<long long>(st.st_dev);
  return true;
}

// Recorded only once its timestamps lie a settle interval before the verification started.
bool settled(const FileIdentity& identity, long long started_ns) {
  return std::max(identity.mtime_ns, identity.ctime_ns) <= started_ns - kSettleNs;
}

std::string real_path(const std::string& path) {
  char* resolved = realpath(path.c_str(), nullptr);
  if (resolved == nullptr) return path;
  std::string out(resolved);
  std::free(resolved);
  return out;
}

long long int64_member(const Json& object, const char* key) {
  const Json* value = object.find(key);
  if (value == nullptr) throw std::runtime_error(std::string("no ") + key);
  return value->int64();
}

// The stamp's entries; empty when it is missing or unreadable, or lacks a field this runner records.
// The Python tools (mobilepeft/export/bundle.py) write the same stamps at the same place.
Stamp read_stamp(const std::string& path) {
  Stamp stamp;
  try {
    const Json root = Json::parse(read_file(path));
    const Json* files = root.find("files");
    if (files == nullptr || !files->is(Json::Type::Object)) return {};
    for (const auto& [name, entry] : files->members()) {
      const Json* sha256 = entry.find("sha256");
      if (sha256 == nullptr || !sha256->is(Json::Type::String)) return {};
      stamp[name] = {sha256->str(), {int64_member(entry, "bytes"), int64_member(entry, "mtime_ns"),
                                     int64_member(entry, "ctime_ns"), int64_member(entry, "inode"),
                                     int64_member(entry, "device")}};
    }
  } catch (const std::exception&) {
    return {};
  }
  return stamp;
}

std::string stamp_json(const std::string& bundle, const Stamp& stamp) {
  JsonWriter files;
  for (const auto& [name, entry] : stamp) {
    JsonWriter record;
    record.put("bytes", entry.identity.bytes);
    record.put("mtime_ns", entry.identity.mtime_ns);
    record.put("ctime_ns", entry.identity.ctime_ns);
    record.put("inode", entry.identity.inode);
    record.put("device", entry.identity.device);
    record.put("sha256", entry.sha256);
    files.put_raw(name, record.str());
  }
  JsonWriter root;
  root.put("bundle", bundle);
  root.put_raw("files", files.str());
  return root.str() + "\n";
}

// mkdir -p, private to this user (the stamps vouch for files); false when it cannot be made.
bool make_directories(const std::string& dir) {
  for (size_t slash = dir.find('/', 1); ; slash = dir.find('/', slash + 1)) {
    const std::string prefix = dir.substr(0, slash);
    if (mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) return false;
    if (slash == std::string::npos) return true;
  }
}

// Temporary file + rename: a reader sees the old stamp or the new one, never half of one.
bool write_stamp(const std::string& dir, const std::string& path, const std::string& text) {
  if (!make_directories(dir)) return false;
  const std::string tmp = path + ".tmp-" + std::to_string(getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return false;
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (std::fclose(f) != 0 || !written || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return false;
  }
  return true;
}

std::string mismatch_message(const Manifest& manifest, const std::string& name, const std::string& actual,
                             const std::string& expected) {
  return manifest.file(name) + ": SHA-256 is " + actual + ", manifest.json records " + expected + " for " + name +
         "; the file is corrupt or was changed after export: copy the bundle again, or re-export it with "
         "`mobilepeft export`";
}

}  // namespace

VerifyMode parse_verify_mode(const std::string& text) {
  if (text == "full") return VerifyMode::Full;
  if (text == "cached") return VerifyMode::Cached;
  if (text == "size") return VerifyMode::Size;
  throw std::invalid_argument("--verify must be full, cached or size, got '" + text + "'");
}

std::string VerifyReport::summary() const {
  if (mode == VerifyMode::Size) return "bundle sizes checked; SHA-256 not checked (--verify size)";
  char mb[32];
  std::snprintf(mb, sizeof mb, "%.1f", hashed_bytes / 1e6);
  return "bundle verified: " + std::to_string(hashed_files) + " files hashed (" + mb + " MB), " +
         std::to_string(unchanged_files) + " unchanged since the stamp; stamp: " + (stamp.empty() ? "none" : stamp);
}

std::string default_stamp_dir() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg != nullptr && xdg[0] == '/') return std::string(xdg) + "/mobilepeft/verified";  // XDG: relative = unset
  const char* home = std::getenv("HOME");
  if (home != nullptr && home[0] != '\0') return std::string(home) + "/.cache/mobilepeft/verified";
  return "";
}

VerifyReport verify_bundle(const Manifest& manifest, VerifyMode mode, const std::string& stamp_dir) {
  manifest.check_files();  // sizes first: a truncated copy is named as such, without hashing anything
  VerifyReport report;
  report.mode = mode;
  if (mode == VerifyMode::Size) return report;
  const long long started = now_ns();
  const std::string bundle = real_path(manifest.dir());
  const std::string stamp_path = stamp_dir.empty() ? "" : stamp_dir + "/" + sha256_hex(bundle) + ".json";
  const Stamp previous = mode == VerifyMode::Cached && !stamp_path.empty() ? read_stamp(stamp_path) : Stamp{};
  Stamp verified;
  for (const std::string& name : manifest.keys("files{}")) {
    const std::string expected = manifest.string("files{}.sha256", {name});
    FileIdentity identity;
    if (!stat_identity(manifest.file(name), &identity))
      throw BundleError(manifest.file(name) + ": listed in manifest.json (files) but missing; copy the whole bundle directory");
    const auto recorded = previous.find(name);
    if (recorded != previous.end() && recorded->second.sha256 == expected && recorded->second.identity == identity) {
      ++report.unchanged_files;
      verified[name] = recorded->second;
      continue;
    }
    const std::string actual = sha256_file(manifest.file(name));
    ++report.hashed_files;
    report.hashed_bytes += identity.bytes;
    if (actual != expected) throw BundleError(mismatch_message(manifest, name, actual, expected));
    if (settled(identity, started)) verified[name] = {expected, identity};
  }
  const bool unchanged = !previous.empty() && report.hashed_files == 0 && verified.size() == previous.size();
  if (!stamp_path.empty() && (unchanged || write_stamp(stamp_dir, stamp_path, stamp_json(bundle, verified))))
    report.stamp = stamp_path;
  return report;
}

}  // namespace mobilepeft
