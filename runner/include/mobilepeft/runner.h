/* The native runner as a C library (docs/on-device-loop.md, "The apps' calls"): open a bundle once,
 * answer with its ExecuTorch program, and swap the adapter kept as data in place, the code
 * `mobilepeft_runner answer` runs. Plain C so every host can call it: the iOS core through a Swift
 * module map (ios_demo/MobilePEFTCore/NativeRunner.swift), the Android core through the JNI layer
 * above it (runner/src/jni_bridge.cpp), Python through ctypes (the tests).
 *
 * Errors: a call that fails returns NULL (or a negative number) and, when `error` is not NULL, sets
 * *error to a message that names the file and the tensor; free it with mobilepeft_string_free. No C++
 * exception crosses this boundary. A handle is used by one thread at a time. */
#ifndef MOBILEPEFT_RUNNER_H
#define MOBILEPEFT_RUNNER_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct MobilepeftRunner MobilepeftRunner;

/* Verify the bundle's files (size and SHA-256, cached), load its program with `threads` XNNPACK
 * threads and its tokenizer. NULL on error. */
MobilepeftRunner* mobilepeft_runner_open(const char* bundle_dir, int threads, char** error);

/* 1 when the bundle keeps its adapter as data (exported with --adapter-as-data), so swap works. */
int mobilepeft_runner_keeps_adapter_as_data(const MobilepeftRunner* runner);

/* The adapter file now active (the bundle's own until a swap); valid until the next swap or close.
 * NULL when the adapter is merged. */
const char* mobilepeft_runner_active_adapter(const MobilepeftRunner* runner);

/* Replace the active adapter with the .ptd at `adapter_path`; the milliseconds it took, or -1 on
 * error. A file that does not fit the bundle's manifest is refused naming the tensor, and the
 * active adapter stays as it was. */
double mobilepeft_runner_swap(MobilepeftRunner* runner, const char* adapter_path, char** error);

/* A greedy answer in a fresh conversation, as a NUL-terminated UTF-8 string (free it with
 * mobilepeft_string_free). `image_path`: binary PPM or raw float32 pixels (.f32), or NULL / "" for
 * none. NULL on error. */
char* mobilepeft_runner_answer(MobilepeftRunner* runner, const char* prompt, const char* image_path,
                               int max_new_tokens, char** error);

/* The process's resident memory now, in MB (VmRSS; the task's resident size on Apple platforms). */
double mobilepeft_runner_rss_mb(void);

void mobilepeft_runner_close(MobilepeftRunner* runner);
void mobilepeft_string_free(char* text);

#ifdef __cplusplus
}
#endif

#endif /* MOBILEPEFT_RUNNER_H */
