// ExecuTorch's platform log hook (a weak symbol in the runtime): its info lines (CPU probing,
// thread-pool resets) would bury the runner's JSON output, so only errors reach stderr unless
// MOBILEPEFT_RUNNER_LOG=info is set.
#include "log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <executorch/runtime/platform/platform.h>

namespace mobilepeft {

bool info_logging() {
  static const bool verbose = [] {
    const char* setting = std::getenv("MOBILEPEFT_RUNNER_LOG");
    return setting != nullptr && std::strcmp(setting, "info") == 0;
  }();
  return verbose;
}

void log_info(const std::string& line) {
  if (info_logging()) std::fprintf(stderr, "[mobilepeft] %s\n", line.c_str());
}

}  // namespace mobilepeft

extern "C" void et_pal_emit_log_message(et_timestamp_t, et_pal_log_level_t level, const char* filename,
                                        const char*, size_t line, const char* message, size_t length) {
  if (!mobilepeft::info_logging() && level != kError && level != kFatal) return;
  std::fprintf(stderr, "[executorch %c %s:%zu] %.*s\n", char(level), filename, line, int(length), message);
}
