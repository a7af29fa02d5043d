// The chat-turn benchmark of `mobilepeft bench` (mobilepeft/export/bench.py), natively: encode one image,
// prefill image tokens + prompt in one text_decoder call, then gen_len greedy one-token steps.
// Figures are medians over the measured runs after warm-up, with min and max, under the keys
// of mobilepeft/export/bench.schema.json (docs/mobile.md).
#pragma once

#include <chrono>
#include <string>

#include "manifest.h"
#include "vlm_program.h"

namespace mobilepeft {

struct BenchSettings {
  int threads = 2;
  int prompt_len = 32;
  int gen_len = 32;
  int runs = 5;
  int warmup = 1;
  std::string swap;  // another adapter file: also time swapping to it and back (bundles with an adapter kept as data)
};

std::string bench_json(VlmProgram& program, const Manifest& manifest, const BenchSettings& settings);

using Clock = std::chrono::steady_clock;
inline double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

void set_threads(int threads);  // ExecuTorch's (XNNPACK's) thread pool
double peak_rss_mb();  // VmHWM: this process's resident high-water mark
double rss_mb();  // VmRSS: resident now
std::string device_description();

}  // namespace mobilepeft
