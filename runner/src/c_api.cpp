// The C API of runner/include/mobilepeft/runner.h: a session (bundle, program, tokenizer,
// generator) behind an opaque handle, every C++ exception turned into an error message.
#include "mobilepeft/runner.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "bench.h"
#include "generate.h"
#include "manifest.h"
#include "sentencepiece.h"
#include "verify.h"
#include "vlm_program.h"

using namespace mobilepeft;

namespace {

// The bundle's files are checked (size and SHA-256, cached) before anything is loaded from them.
const Manifest& verified(const Manifest& manifest) {
  verify_bundle(manifest, VerifyMode::Cached, default_stamp_dir());
  return manifest;
}

char* copy(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out) std::memcpy(out, text.c_str(), text.size() + 1);
  return out;
}

// Run `body`; on an exception put its message in *error and return `fallback`.
template <typename F>
auto guarded(char** error, F body, decltype(body()) fallback) -> decltype(body()) {
  if (error) *error = nullptr;
  try {
    return body();
  } catch (const std::exception& e) {
    if (error) *error = copy(e.what());
  } catch (...) {
    if (error) *error = copy("unknown native error");
  }
  return fallback;
}

std::string or_empty(const char* text) { return text ? text : ""; }

}  // namespace

struct MobilepeftRunner {
  explicit MobilepeftRunner(const std::string& dir)
      : manifest(Manifest::load(dir)),
        program(verified(manifest)),
        tokenizer(SentencePieceBpe::load(manifest.file(manifest.string("tokenizer.file")))),
        generator(program, tokenizer, manifest) {}
  Manifest manifest;
  VlmProgram program;
  SentencePieceBpe tokenizer;
  Generator generator;
};

extern "C" {

MobilepeftRunner* mobilepeft_runner_open(const char* bundle_dir, int threads, char** error) {
  return guarded(error, [&]() -> MobilepeftRunner* {
    if (!bundle_dir || !*bundle_dir) throw BundleError("no bundle folder given");
    set_threads(threads);
    return new MobilepeftRunner(bundle_dir);
  }, nullptr);
}

int mobilepeft_runner_keeps_adapter_as_data(const MobilepeftRunner* runner) {
  return runner && runner->program.adapter() ? 1 : 0;
}

const char* mobilepeft_runner_active_adapter(const MobilepeftRunner* runner) {
  if (!runner) return nullptr;
  const AdapterSlot* slot = runner->program.adapter();
  return slot ? slot->active().c_str() : nullptr;
}

double mobilepeft_runner_swap(MobilepeftRunner* runner, const char* adapter_path, char** error) {
  return guarded(error, [&]() -> double {
    if (!runner) throw std::invalid_argument("the native runner is closed");
    AdapterSlot* slot = runner->program.adapter();
    if (!slot)
      throw BundleError(runner->manifest.file("manifest.json") +
                        ": the bundle has its adapter merged; export it with --adapter-as-data");
    const auto t0 = Clock::now();
    slot->swap(or_empty(adapter_path));
    return ms_since(t0);
  }, -1.0);
}

char* mobilepeft_runner_answer(MobilepeftRunner* runner, const char* prompt, const char* image_path,
                               int max_new_tokens, char** error) {
  return guarded(error, [&]() -> char* {
    if (!runner) throw std::invalid_argument("the native runner is closed");
    const Generation g = runner->generator.generate(or_empty(prompt), or_empty(image_path), max_new_tokens);
    char* out = copy(g.text);
    if (!out) throw std::bad_alloc();
    return out;
  }, nullptr);
}

double mobilepeft_runner_rss_mb(void) { return rss_mb(); }

void mobilepeft_runner_close(MobilepeftRunner* runner) { delete runner; }

void mobilepeft_string_free(char* text) { std::free(text); }

}  // extern "C"
