// The Android core's NativeRunner (android_demo/app/core, dev.mobilepeft.core.NativeRunner) over the
// runner's C API (runner/include/mobilepeft/runner.h; docs/on-device-loop.md): Java strings in,
// errors out as dev.mobilepeft.core.BundleError with the runner's message (it names the file and
// the tensor).
#include <jni.h>

#include <string>

#include "mobilepeft/runner.h"

namespace {

// A Java string as UTF-8 for the C API, released when this goes out of scope.
class Utf {
 public:
  Utf(JNIEnv* env, jstring s) : env_(env), s_(s), chars_(s ? env->GetStringUTFChars(s, nullptr) : nullptr) {}
  ~Utf() {
    if (chars_) env_->ReleaseStringUTFChars(s_, chars_);
  }
  Utf(const Utf&) = delete;
  Utf& operator=(const Utf&) = delete;
  const char* c_str() const { return chars_ ? chars_ : ""; }

 private:
  JNIEnv* env_;
  jstring s_;
  const char* chars_;
};

// Throw BundleError with `error` (the C API's message) and free it.
void raise(JNIEnv* env, char* error) {
  jclass type = env->FindClass("dev/mobilepeft/core/BundleError");
  if (type) env->ThrowNew(type, error ? error : "unknown native error");  // else NoClassDefFoundError is pending
  mobilepeft_string_free(error);
}

MobilepeftRunner* runner(jlong handle) { return reinterpret_cast<MobilepeftRunner*>(handle); }

}  // namespace

extern "C" {

JNIEXPORT jlong JNICALL Java_dev_mobilepeft_core_NativeRunnerJni_nativeOpen(JNIEnv* env, jclass, jstring dir, jint threads) {
  char* error = nullptr;
  MobilepeftRunner* opened = mobilepeft_runner_open(Utf(env, dir).c_str(), int(threads), &error);
  if (!opened) raise(env, error);
  return reinterpret_cast<jlong>(opened);
}

JNIEXPORT jboolean JNICALL Java_dev_mobilepeft_core_NativeRunnerJni_nativeKeepsAdapterAsData(JNIEnv*, jclass, jlong handle) {
  return mobilepeft_runner_keeps_adapter_as_data(runner(handle)) ? JNI_TRUE : JNI_FALSE;
}

JNIEXPORT jdouble JNICALL Java_dev_mobilepeft_core_NativeRunnerJni_nativeSwap(JNIEnv* env, jclass, jlong handle, jstring path) {
  char* error = nullptr;
  const double ms = mobilepeft_runner_swap(runner(handle), Utf(env, path).c_str(), &error);
  if (ms < 0) raise(env, error);
  return ms;
}

// The answer as UTF-8 bytes (Kotlin decodes them): NewStringUTF takes JNI's modified UTF-8, which
// differs from UTF-8 for NUL and characters outside the BMP.
JNIEXPORT jbyteArray JNICALL Java_dev_mobilepeft_core_NativeRunnerJni_nativeAnswer(JNIEnv* env, jclass, jlong handle,
                                                                                    jstring prompt, jstring image,
                                                                                    jint max_new_tokens) {
  char* error = nullptr;
  char* text = mobilepeft_runner_answer(runner(handle), Utf(env, prompt).c_str(), Utf(env, image).c_str(),
                                        int(max_new_tokens), &error);
  if (!text) {
    raise(env, error);
    return nullptr;
  }
  const std::string answer(text);
  mobilepeft_string_free(text);
  jbyteArray out = env->NewByteArray(jsize(answer.size()));
  if (out) env->SetByteArrayRegion(out, 0, jsize(answer.size()), reinterpret_cast<const jbyte*>(answer.data()));
  return out;
}

JNIEXPORT jdouble JNICALL Java_dev_mobilepeft_core_NativeRunnerJni_nativeRssMb(JNIEnv*, jclass) {
  return mobilepeft_runner_rss_mb();
}

JNIEXPORT void JNICALL Java_dev_mobilepeft_core_NativeRunnerJni_nativeClose(JNIEnv*, jclass, jlong handle) {
  mobilepeft_runner_close(runner(handle));
}

}  // extern "C"
