// Every command verifies its bundle before it loads anything from it: each file manifest.json
// lists must have the recorded size and SHA-256. A size check alone misses a file overwritten in
// place (a .pte with 4 KB of garbage still loads, and generates garbage); the hash does not.
//
// Hashing a 1 GB .pte takes about a second, so a successful verification leaves a stamp outside
// the bundle ($XDG_CACHE_HOME/mobilepeft/verified/, else ~/.cache/mobilepeft/verified/; the name is
// the SHA-256 of the bundle's real path + ".json"; the Python tools keep the same stamps there)
// recording, per file, the manifest's sha256 and what stat() says: bytes, mtime and ctime in ns,
// inode and device. Next time a file whose stat() fields and manifest sha256 are still what the
// stamp records is not hashed again; every other file is. Writing to a file sets its ctime to the
// present (no program can set ctime back) and replacing it changes the inode, so a modified file
// is always hashed again. Timestamps are coarse (a clock tick; 2 s on FAT), so a file changed less
// than 2 s before the verification started is hashed but not recorded: a second write within the
// same tick could leave its timestamps as recorded. A cache directory that cannot be read or
// written only means hashing everything each time.
#pragma once

#include <string>

#include "manifest.h"

namespace mobilepeft {

// --verify: full (hash every file, then write the stamp), cached (the stamp rule above: the
// default) or size (sizes only: unsafe, a file overwritten in place passes).
enum class VerifyMode { Full, Cached, Size };
VerifyMode parse_verify_mode(const std::string& text);  // throws std::invalid_argument

struct VerifyReport {
  VerifyMode mode = VerifyMode::Cached;
  int hashed_files = 0;
  long long hashed_bytes = 0;
  int unchanged_files = 0;  // not hashed: stat() fields and sha256 as the stamp recorded them
  std::string stamp;  // the stamp that now vouches for the bundle; empty when none could be written
  std::string summary() const;  // one line for the info log
};

// $XDG_CACHE_HOME/mobilepeft/verified, else $HOME/.cache/mobilepeft/verified; "" when neither is set.
std::string default_stamp_dir();

// Sizes, then (unless mode is Size) SHA-256s with the stamp in stamp_dir ("" for none). Throws
// BundleError naming the first file that is missing, has the wrong size or the wrong hash.
VerifyReport verify_bundle(const Manifest& manifest, VerifyMode mode, const std::string& stamp_dir);

}  // namespace mobilepeft
