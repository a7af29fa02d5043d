// The native runner as a library for the apps (docs/on-device-loop.md): the Android core's
// NativeRunner (android_demo/app/core, dev.mobilepeft.core.NativeRunner) opens a bundle once, answers
// with the fast ExecuTorch program and swaps the personalized adapter in place through AdapterSlot,
// the same code `mobilepeft_runner answer` runs. Errors become dev.mobilepeft.core.BundleError with
// the runner's message (it names the file and the tensor); nothing escapes as a C++ exception.
#include <jni.h>

#include <memory>
#include <string>

#include "bench.h"
#include "generate.h"
#include "manifest.h"
#include "sentencepiece.h"
#include "verify.h"
#include "vlm_program.h"

namespace {

using namespace mobilepeft;

// The bundle's files are checked (size and SHA-256, cached) before anything is loaded from them.
const Manifest& verified(const Manifest& manifest) {
  verify_bundle(manifest, VerifyMode::Cached, default_stamp_dir());
  return manifest;
}

struct Session {
  explicit Session(const std::string& dir)
      : manifest(Manifest::load(dir)),
        program(verified(manifest)),
        tokenizer(SentencePieceBpe::load(manifest.file(manifest.string("tokenizer.file")))),
        generator(program, tokenizer, manifest) {}
  Manifest manifest;
  VlmProgram program;
  SentencePieceBpe tokenizer;
  Generator generator;
};

std::string text(JNIEnv* env, jstring s) {
  if (!s) return "";
  const char* chars = env->GetStringUTFChars(s, nullptr);
  std::string out(chars);
  env->ReleaseStringUTFChars(s, chars);
  return out;
}

void raise(JNIEnv* env, const std::string& message) {
  jclass error = env->FindClass("dev/mobilepeft/core/BundleError");
  if (!error) return;  // FindClass left a NoClassDefFoundError pending
  env->ThrowNew(error, message.c_str());
}

template <typename F>
auto guarded(JNIEnv* env, F body, decltype(body()) fallback) -> decltype(body()) {
  try {
    return body();
  } catch (const std::exception& e) {
    raise(env, e.what());
  } catch (...) {
    raise(env, "unknown native error");
  }
  return fallback;
}

Session* session(jlong handle) { return reinterpret_cast<Session*>(handle); }

}  // namespace

extern "C" {

JNIEXPORT jlong JNICALL Java_dev_mobilepeft_core_NativeRunnerJni_nativeOpen(JNIEnv* env, jclass, jstring dir, jint threads) {
  return guarded(env, [&]() -> jlong {
    set_threads(int(threads));
    return reinterpret_cast<jlong>(new Session(text(env, dir)));
  }, jlong(0));
}

JNIEXPORT jboolean JNICALL Java_dev_mobilepeft_core_NativeRunnerJni_nativeKeepsAdapterAsData(JNIEnv*, jclass, jlong handle) {
  return session(handle)->program.adapter() ? JNI_TRUE : JNI_FALSE;
}

JNIEXPORT jdouble JNICALL Java_dev_mobilepeft_core_NativeRunnerJni_nativeSwap(JNIEnv* env, jclass, jlong handle, jstring path) {
  return guarded(env, [&]() -> jdouble {
    Session* s = session(handle);
    if (!s->program.adapter())
      throw BundleError(s->manifest.file("manifest.json") + ": the bundle has its adapter merged; export it with --adapter-as-data");
    const auto t0 = Clock::now();
    s->program.adapter()->swap(text(env, path));
    return ms_since(t0);
  }, jdouble(-1));
}

// The answer as UTF-8 bytes (Kotlin decodes them): NewStringUTF takes JNI's modified UTF-8, which
// differs from UTF-8 for NUL and characters outside the BMP.
JNIEXPORT jbyteArray JNICALL Java_dev_mobilepeft_core_NativeRunnerJni_nativeAnswer(JNIEnv* env, jclass, jlong handle,
                                                                                    jstring prompt, jstring image,
                                                                                    jint max_new_tokens) {
  return guarded(env, [&]() -> jbyteArray {
    const Generation g = session(handle)->generator.generate(text(env, prompt), text(env, image), int(max_new_tokens));
    jbyteArray out = env->NewByteArray(jsize(g.text.size()));
    if (out) env->SetByteArrayRegion(out, 0, jsize(g.text.size()), reinterpret_cast<const jbyte*>(g.text.data()));
    return out;
  }, jbyteArray(nullptr));
}

JNIEXPORT jdouble JNICALL Java_dev_mobilepeft_core_NativeRunnerJni_nativeRssMb(JNIEnv*, jclass) { return rss_mb(); }

JNIEXPORT void JNICALL Java_dev_mobilepeft_core_NativeRunnerJni_nativeClose(JNIEnv*, jclass, jlong handle) {
  delete session(handle);
}

}  // extern "C"
