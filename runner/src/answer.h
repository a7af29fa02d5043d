// `answer`: what an app does after personalization, in one process. The bundle is loaded once; a
// list of questions is answered with the active adapter, then each further adapter file is swapped
// in (AdapterSlot::swap: checked, copied over the live tensors, nothing reloaded) and the same
// questions are answered again. docs/on-device-loop.md shows the `mobilepeft demo` run of it.
#pragma once

#include <string>
#include <vector>

#include "manifest.h"
#include "sentencepiece.h"
#include "vlm_program.h"

namespace mobilepeft {

struct Question {
  std::string id, prompt, image;  // image: a path made absolute against the questions file's folder
};

// A JSON array of {"id", "prompt", "image"} objects (image optional: .ppm or raw .f32, relative to
// the file); throws BundleError naming the file and the item that does not fit.
std::vector<Question> read_questions(const std::string& path);

// One pass per adapter: the active one first (label `active`), then each file of `swaps` in turn.
std::string answer_json(VlmProgram& program, const SentencePieceBpe& tokenizer, const Manifest& manifest,
                        const std::vector<Question>& questions, const std::string& active,
                        const std::vector<std::string>& swaps, int max_new_tokens);

}  // namespace mobilepeft
