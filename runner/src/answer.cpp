#include "answer.h"

#include "bench.h"
#include "generate.h"
#include "json.h"

namespace mobilepeft {
namespace {

std::string folder_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "" : path.substr(0, slash + 1);
}

// Answers every question and adds the pass's figures and answers to `out`.
void answer_all(JsonWriter& out, Generator& generator, const std::vector<Question>& questions, int max_new_tokens) {
  std::string answers = "[";
  long long tokens = 0;
  const auto t0 = Clock::now();
  for (size_t k = 0; k < questions.size(); ++k) {
    const Generation g = generator.generate(questions[k].prompt, questions[k].image, max_new_tokens);
    tokens += (long long)g.tokens.size();
    JsonWriter a;
    a.put("id", questions[k].id);
    a.put("text", g.text);
    answers += (k ? ", " : "") + a.str();
  }
  out.put("seconds", ms_since(t0) / 1000);
  out.put("generated_tokens", tokens);
  out.put_raw("answers", answers + "]");
}

}  // namespace

std::vector<Question> read_questions(const std::string& path) {
  Json root;
  try {
    root = Json::parse(read_file(path));
  } catch (const std::runtime_error& e) {
    throw BundleError(path + ": " + e.what());
  }
  if (!root.is(Json::Type::Array) || root.items().empty())
    throw BundleError(path + ": expected a non-empty JSON array of {\"id\", \"prompt\", \"image\"} objects");
  std::vector<Question> out;
  for (size_t k = 0; k < root.items().size(); ++k) {
    const Json& item = root.items()[k];
    const Json* prompt = item.find("prompt");
    const Json* id = item.find("id");
    const Json* image = item.find("image");
    if (!prompt || !prompt->is(Json::Type::String) || (id && !id->is(Json::Type::String)) ||
        (image && !image->is(Json::Type::String)))
      throw BundleError(path + ": item " + std::to_string(k) + " needs a string \"prompt\" (and string \"id\", \"image\" if given)");
    Question q{id ? id->str() : std::to_string(k), prompt->str(), image ? image->str() : ""};
    if (!q.image.empty() && q.image[0] != '/') q.image = folder_of(path) + q.image;
    out.push_back(std::move(q));
  }
  return out;
}

std::string answer_json(VlmProgram& program, const SentencePieceBpe& tokenizer, const Manifest& manifest,
                        const std::vector<Question>& questions, const std::string& active,
                        const std::vector<std::string>& swaps, int max_new_tokens) {
  if (!swaps.empty() && !program.adapter())
    throw BundleError(manifest.file("manifest.json") + ": --swap needs a bundle exported with --adapter-as-data");
  Generator generator(program, tokenizer, manifest);
  JsonWriter first;
  first.put("adapter", active);
  answer_all(first, generator, questions, max_new_tokens);
  std::string passes = "[" + first.str();
  for (const std::string& file : swaps) {
    const double rss_before = rss_mb();
    const auto t0 = Clock::now();
    program.adapter()->swap(file);
    JsonWriter swap;
    swap.put("adapter", file);
    swap.put("swap_ms", ms_since(t0));
    swap.put("rss_before_swap_mb", rss_before);
    swap.put("rss_after_swap_mb", rss_mb());
    answer_all(swap, generator, questions, max_new_tokens);
    passes += ", " + swap.str();
  }
  JsonWriter out;
  out.put("load_ms", program.load_ms());
  out.put("questions", static_cast<long long>(questions.size()));
  out.put_raw("passes", passes + "]");
  out.put("peak_rss_mb", peak_rss_mb());
  return out.str();
}

}  // namespace mobilepeft
