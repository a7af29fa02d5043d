#include "bench.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <vector>

#include <sys/utsname.h>
#include <unistd.h>
#ifdef __ANDROID__
#include <sys/system_properties.h>
#endif
#ifdef __APPLE__
#include <mach/mach.h>
#endif

#if __has_include(<executorch/extension/threadpool/threadpool.h>)
#include <executorch/extension/threadpool/threadpool.h>
#else
// The pip wheel ships libexecutorch_threadpool.so but not this header; these are its exported
// symbols (a source build of ExecuTorch, e.g. for Android, has the header and takes the branch above).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool
#endif

#include "json.h"

namespace mobilepeft {
namespace {

struct Turn {
  double vision_encode_ms, prefill_tokens_per_s, decode_tokens_per_s, time_to_first_token_ms;
};

Turn one_turn(VlmProgram& program, const std::vector<float>& pixels, const std::vector<int64_t>& prompt, int gen_len) {
  const auto t0 = Clock::now();
  std::vector<float> embeds = program.encode_image(pixels);
  const double vision_ms = ms_since(t0);
  const auto t1 = Clock::now();
  std::vector<float> text = program.embed(prompt);
  embeds.insert(embeds.end(), text.begin(), text.end());
  int token = argmax(program.decode(embeds, 0));
  const double prefill_ms = ms_since(t1);
  const auto t2 = Clock::now();
  int64_t position = program.image_tokens() + int64_t(prompt.size());
  for (int k = 0; k < gen_len; ++k) token = argmax(program.decode(program.embed({token}), position++));
  const double decode_ms = ms_since(t2);
  const double prompt_tokens = program.image_tokens() + double(prompt.size());
  return {vision_ms, prompt_tokens / (prefill_ms / 1000), gen_len / (decode_ms / 1000), vision_ms + prefill_ms};
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

void put_stats(JsonWriter& out, const std::string& key, const std::vector<double>& values) {
  out.put(key, median(values));
  out.put(key + "_min", *std::min_element(values.begin(), values.end()));
  out.put(key + "_max", *std::max_element(values.begin(), values.end()));
}

}  // namespace

std::string bench_json(VlmProgram& program, const Manifest& manifest, const BenchSettings& s) {
  const int max_seq = int(manifest.integer("max_seq_len"));
  if (program.image_tokens() + s.prompt_len + s.gen_len + 1 > max_seq)
    throw BundleError("image tokens (" + std::to_string(program.image_tokens()) + ") + --prompt-len + --gen-len exceed "
                      "the bundle's max_seq_len " + std::to_string(max_seq) + "; shorten them or re-export with a larger --max-seq-len");
  // A fixed pseudo-random image and prompt (same on every device): timings do not depend on values.
  const int size = int(manifest.integer("image_preprocessing.size"));
  const long long vocab = manifest.integer("model.vocab_size");
  uint64_t state = 0x9E3779B97F4A7C15ull;
  auto next = [&state]() { state = state * 6364136223846793005ull + 1442695040888963407ull; return state >> 33; };
  std::vector<float> pixels(size_t(3) * size * size);
  for (float& p : pixels) p = float(next() % 3001) / 1000.0f - 1.5f;
  std::vector<int64_t> prompt(size_t(s.prompt_len));
  for (int64_t& id : prompt) id = 3 + int64_t(next() % uint64_t(std::min<long long>(vocab, 500) - 3));

  std::vector<double> vision, prefill, decode, ttft;
  for (int run = 0; run < s.warmup + s.runs; ++run) {
    Turn t = one_turn(program, pixels, prompt, s.gen_len);
    if (run < s.warmup) continue;
    vision.push_back(t.vision_encode_ms);
    prefill.push_back(t.prefill_tokens_per_s);
    decode.push_back(t.decode_tokens_per_s);
    ttft.push_back(t.time_to_first_token_ms);
  }
  JsonWriter out;
  if (!s.swap.empty()) {
    AdapterSlot* slot = program.adapter();
    if (!slot) throw BundleError(manifest.file("manifest.json") + ": --swap needs a bundle exported with --adapter-as-data");
    // Swap to the other adapter and back each run; each swap is followed by a chat turn's first token.
    const std::string original = slot->active();
    std::vector<double> swaps, first_token;
    const double rss_before = rss_mb();
    for (int run = 0; run < s.runs; ++run) {
      for (const std::string* file : {&s.swap, &original}) {
        const auto t0 = Clock::now();
        slot->swap(*file);
        swaps.push_back(ms_since(t0));
        first_token.push_back(one_turn(program, pixels, prompt, 1).time_to_first_token_ms);
      }
    }
    out.put("adapter_bytes", static_cast<long long>(slot->bytes()));
    put_stats(out, "adapter_swap_ms", swaps);
    out.put("rss_before_swap_mb", rss_before);
    out.put("rss_after_swap_mb", rss_mb());
    out.put("time_to_first_token_after_swap_ms", median(first_token));
  }
  out.put("model_load_time_ms", program.load_ms());
  put_stats(out, "vision_encode_ms", vision);
  put_stats(out, "prefill_tokens_per_s", prefill);
  put_stats(out, "decode_tokens_per_s", decode);
  put_stats(out, "time_to_first_token_ms", ttft);
  out.put("peak_rss_mb", peak_rss_mb());
  out.put("threads", s.threads);
  out.put("backend", manifest.string("executorch.backend"));
  out.put("quantization", manifest.string("executorch.quantization"));
  out.put("device", device_description());
  out.put("runtime", "executorch");
  out.put("harness", "native-runner");
  out.put("prompt_tokens", program.image_tokens() + s.prompt_len);
  out.put("generated_tokens", s.gen_len);
  out.put("runs", s.runs);
  return out.str();
}

void set_threads(int threads) {
  executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(uint32_t(threads));
}

#ifdef __APPLE__
// No /proc on Apple platforms: the task's own counters (the phys_footprint Xcode shows is not RSS).
namespace {
double task_mb(bool peak) {
  mach_task_basic_info_data_t info{};
  mach_msg_type_number_t count = MACH_TASK_BASIC_INFO_COUNT;
  if (task_info(mach_task_self(), MACH_TASK_BASIC_INFO, reinterpret_cast<task_info_t>(&info), &count) != KERN_SUCCESS)
    return 0;
  return double(peak ? info.resident_size_max : info.resident_size) / (1024.0 * 1024.0);
}
}  // namespace
double peak_rss_mb() { return task_mb(true); }
double rss_mb() { return task_mb(false); }
#else
namespace {
double status_mb(const std::string& field) {  // a "Vm...: N kB" line of /proc/self/status
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind(field, 0) == 0) return std::stod(line.substr(field.size())) / 1024.0;
  return 0;
}
}  // namespace
double peak_rss_mb() { return status_mb("VmHWM:"); }
double rss_mb() { return status_mb("VmRSS:"); }
#endif

std::string device_description() {
#ifdef __ANDROID__
  char brand[PROP_VALUE_MAX] = {}, model[PROP_VALUE_MAX] = {}, release[PROP_VALUE_MAX] = {};
  __system_property_get("ro.product.brand", brand);
  __system_property_get("ro.product.model", model);
  __system_property_get("ro.build.version.release", release);
  return std::string(brand) + " " + model + " (Android " + release + ")";
#else
  utsname u{};
  uname(&u);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return std::string("host ") + u.machine + " (" + host + ")";
#endif
}

}  // namespace mobilepeft
