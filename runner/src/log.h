// The runner's diagnostics on stderr: errors always, information lines (ExecuTorch's own, and the
// runner's, such as what the bundle verification hashed) only with MOBILEPEFT_RUNNER_LOG=info, so
// that they never bury the JSON a command prints.
#pragma once

#include <string>

namespace mobilepeft {

bool info_logging();  // MOBILEPEFT_RUNNER_LOG=info
void log_info(const std::string& line);  // "[mobilepeft] <line>" on stderr when info_logging()

}  // namespace mobilepeft
