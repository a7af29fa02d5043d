// mobilepeft_runner: generate with, or benchmark, a mobilepeft ExecuTorch bundle from a shell,
// the way ExecuTorch models are benchmarked over adb. Reads only the bundle's manifest.json, and
// verifies every file it lists (size and SHA-256, verify.h) before loading any of them.
//
//   mobilepeft_runner generate --bundle DIR --prompt "What colour?" [--image photo.ppm] [--max-new-tokens 64]
//   mobilepeft_runner bench    --bundle DIR [--threads 2 --prompt-len 32 --gen-len 32 --runs 5 --warmup 1]
//                              [--output result.json]
//                              [--swap OTHER.ptd]                       (time adapter swaps too)
//   mobilepeft_runner adapter-import --bundle DIR --ort-bundle ORT_DIR --checkpoint CKPT --output FILE.ptd
//   mobilepeft_runner tokenize --bundle DIR --text-file strings.json      (a JSON array of strings)
//   mobilepeft_runner preprocess --bundle DIR --image photo.ppm --output pixels.f32
//   mobilepeft_runner sha256 FILE...                                      (sha256sum's output format)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "adapter.h"
#include "answer.h"
#include "bench.h"
#include "generate.h"
#include "image.h"
#include "json.h"
#include "log.h"
#include "ort_checkpoint.h"
#include "manifest.h"
#include "sha256.h"
#include "verify.h"
#include "vlm_program.h"

using namespace mobilepeft;

namespace {

const char* kUsage =
    "usage: mobilepeft_runner generate --bundle DIR --prompt TEXT [--image FILE.ppm|FILE.f32] [--max-new-tokens N] [--threads N]\n"
    "                                   [--adapter FILE.ptd]\n"
    "       mobilepeft_runner bench --bundle DIR [--threads N] [--prompt-len N] [--gen-len N] [--runs N] [--warmup N] [--output FILE]\n"
    "                               [--swap FILE.ptd]\n"
    "       mobilepeft_runner answer --bundle DIR --questions FILE.json [--adapter FILE.ptd] [--swap FILE.ptd[,FILE.ptd...]]\n"
    "                                [--max-new-tokens N] [--threads N] [--output FILE]\n"
    "       mobilepeft_runner adapter-import --bundle DIR --ort-bundle ORT_DIR --checkpoint CKPT --output FILE.ptd\n"
    "       mobilepeft_runner tokenize --bundle DIR --text-file STRINGS.json\n"
    "       mobilepeft_runner preprocess --bundle DIR --image FILE.ppm --output PIXELS.f32\n"
    "       mobilepeft_runner sha256 FILE...\n"
    "\n"
    "generate  answer a prompt (about an image) greedily; prints {\"text\", \"tokens\", \"pieces\", ...} as JSON\n"
    "bench     time a chat turn (vision encode, prefill, decode); prints the benchmark JSON of docs/mobile.md;\n"
    "          with --swap also the time to swap to another adapter file and back, RSS around it, first token after it\n"
    "answer    answer a list of questions, load once: with the active adapter, then after swapping in each --swap\n"
    "          file (nothing reloaded); prints each pass's answers, swap time and RSS around the swap as JSON\n"
    "adapter-import  write an adapter file for the bundle from an ONNX Runtime training checkpoint (the phone's\n"
    "          personalized adapter; ORT_DIR is the bundle it trained with), checked against both manifests\n"
    "tokenize  token ids of each string of a JSON array with the bundle's tokenizer (to check it against the host's)\n"
    "preprocess  write the pixel_values the runner feeds the vision encoder for an image (float32, NCHW)\n"
    "sha256    the runner's own SHA-256 of files, as sha256sum prints it\n"
    "\n"
    "--bundle          a directory written by `mobilepeft export executorch` (manifest.json, model.pte, tokenizer.model)\n"
    "--image           binary PPM (P6; `convert photo.jpg photo.ppm`), preprocessed as the manifest says, or raw float32\n"
    "                  pixel_values [1,3,S,S] (.f32)\n"
    "--threads         ExecuTorch/XNNPACK threads (default 2)\n"
    "--adapter         answer with this adapter file instead of the bundle's adapter.ptd (bundles exported with\n"
    "                  --adapter-as-data); refused, naming the tensor, unless it fits the bundle's manifest\n"
    "--verify          how the bundle's files are checked before anything is loaded from it:\n"
    "                  cached (default): size and SHA-256, not re-hashing a file unchanged (stat) since the last\n"
    "                  successful verification (its stamp: $XDG_CACHE_HOME/mobilepeft/verified/, else\n"
    "                  ~/.cache/mobilepeft/verified/);\n"
    "                  full: hash every file; size: sizes only (UNSAFE: a file overwritten in place passes)\n"
    "--questions       a JSON array of {\"id\", \"prompt\", \"image\"} (image paths relative to the file)\n"
    "--output          also write the JSON to FILE (atomically: FILE.tmp, then renamed)\n";

struct Args {
  std::string command;
  std::map<std::string, std::string> options;

  std::string get(const std::string& name, const std::string& fallback = "") const {
    auto it = options.find(name);
    return it == options.end() ? fallback : it->second;
  }
  int int_option(const std::string& name, int fallback, int minimum) const {
    const std::string value = get(name);
    if (value.empty()) return fallback;
    char* end = nullptr;
    long v = std::strtol(value.c_str(), &end, 10);
    if (*end != '\0' || v < minimum)
      throw std::invalid_argument("--" + name + " must be an integer >= " + std::to_string(minimum) + ", got '" + value + "'");
    return int(v);
  }
};

Args parse(int argc, char** argv) {
  Args args;
  if (argc < 2) throw std::invalid_argument("missing command");
  args.command = argv[1];
  static const std::vector<std::string> known = {"bundle", "prompt", "image", "max-new-tokens", "threads",
                                                 "prompt-len", "gen-len", "runs", "warmup", "output", "text-file", "verify",
                                                 "adapter", "swap", "ort-bundle", "checkpoint", "questions"};
  for (int i = 2; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag.rfind("--", 0) != 0 || std::find(known.begin(), known.end(), flag.substr(2)) == known.end())
      throw std::invalid_argument("unknown option '" + flag + "'");
    if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
    args.options[flag.substr(2)] = argv[++i];
  }
  if (args.get("bundle").empty()) throw std::invalid_argument("--bundle is required");
  return args;
}

std::string tokenize_json(const Manifest& manifest, const std::string& text_file) {
  if (text_file.empty()) throw std::invalid_argument("tokenize needs --text-file");
  const SentencePieceBpe tokenizer = SentencePieceBpe::load(manifest.file(manifest.string("tokenizer.file")));
  Json strings;
  try {
    strings = Json::parse(read_file(text_file));
  } catch (const std::runtime_error& e) {
    throw BundleError(text_file + ": " + e.what());
  }
  if (!strings.is(Json::Type::Array)) throw BundleError(text_file + ": expected a JSON array of strings");
  std::string out = "[";
  for (size_t k = 0; k < strings.items().size(); ++k) {
    const Json& s = strings.items()[k];
    if (!s.is(Json::Type::String)) throw BundleError(text_file + ": item " + std::to_string(k) + " is not a string");
    std::string ids;
    for (int id : tokenizer.encode(s.str())) ids += (ids.empty() ? "" : ", ") + std::to_string(id);
    out += std::string(k ? ", " : "") + "[" + ids + "]";
  }
  return out + "]";
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  for (size_t from = 0; from < text.size();) {
    const size_t comma = text.find(',', from);
    const size_t end = comma == std::string::npos ? text.size() : comma;
    if (end > from) out.push_back(text.substr(from, end - from));
    from = end + 1;
  }
  return out;
}

// `sha256 FILE...`: lets a test (or a user on a phone) compare the runner's hash with sha256sum's.
int print_sha256(int argc, char** argv) {
  if (argc < 3) throw std::invalid_argument("sha256 needs at least one file");
  for (int i = 2; i < argc; ++i) std::printf("%s  %s\n", sha256_file(argv[i]).c_str(), argv[i]);
  return 0;
}

void write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f || std::fwrite(text.data(), 1, text.size(), f) != text.size() || std::fclose(f) != 0)
    throw std::runtime_error(tmp + ": cannot write the result");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": cannot rename " + tmp + " into place");
}

// `adapter-import`: the phone's trained tensors (ORT checkpoint, names mapped to PEFT names by the
// ORT bundle's manifest) into an adapter file for this ExecuTorch bundle, then loaded back to check it.
int import_adapter(const Manifest& manifest, const Args& args) {
  if (args.get("ort-bundle").empty() || args.get("checkpoint").empty() || args.get("output").empty())
    throw std::invalid_argument("adapter-import needs --ort-bundle, --checkpoint and --output");
  if (!AdapterLayout::present(manifest))
    throw BundleError(manifest.file("manifest.json") + ": the bundle has its adapter merged; export it with --adapter-as-data");
  const Manifest ort = Manifest::load(args.get("ort-bundle"));
  for (const char* key : {"model.num_hidden_layers", "model.hidden_size"})
    if (ort.integer(key) != manifest.integer(key))
      throw BundleError("the ORT bundle " + ort.dir() + " has " + std::to_string(ort.integer("model.num_hidden_layers")) +
                        " decoder layers of hidden size " + std::to_string(ort.integer("model.hidden_size")) +
                        "; the ExecuTorch bundle " + manifest.dir() + " has " +
                        std::to_string(manifest.integer("model.num_hidden_layers")) + " of hidden size " +
                        std::to_string(manifest.integer("model.hidden_size")) + ": they come from different models");
  const int frozen_layers =
      ort.has("onnx_training.split") ? int(ort.integer("onnx_training.split.frozen_layers")) : 0;
  const auto trained = read_ort_trainable(args.get("checkpoint"));
  std::map<std::string, std::vector<float>> by_adapter_key;
  for (size_t i = 0; i < ort.count("onnx_training.trainable[]"); ++i) {
    const std::string name = ort.string("onnx_training.trainable[].name", {int(i)});
    auto it = trained.find(name);
    if (it == trained.end())
      throw BundleError(args.get("checkpoint") + ": no trainable tensor '" + name + "'; pass the checkpoint of " +
                        ort.dir() + "'s adapter");
    by_adapter_key[ort.string("onnx_training.trainable[].adapter_key", {int(i)})] = it->second;
  }
  const AdapterLayout layout = AdapterLayout::read(manifest);
  const std::vector<uint8_t> file = adapter_file_bytes(layout, manifest, by_adapter_key, frozen_layers);
  check_adapter_file(layout, args.get("output"), file);  // read back by ExecuTorch's FlatTensor reader
  write_atomically(args.get("output"), std::string(file.begin(), file.end()));
  JsonWriter out;
  out.put("adapter", args.get("output"));
  out.put("bytes", static_cast<long long>(file.size()));
  out.put("tensors", static_cast<long long>(layout.tensors.size()));
  std::printf("%s\n", out.str().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  VerifyMode verify_mode = VerifyMode::Cached;
  try {
    if (argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (argc >= 2 && std::string(argv[1]) == "sha256") return print_sha256(argc, argv);
    args = parse(argc, argv);
    static const std::vector<std::string> commands = {"generate", "bench", "answer", "tokenize", "preprocess", "adapter-import"};
    if (std::find(commands.begin(), commands.end(), args.command) == commands.end()) throw std::invalid_argument("unknown command '" + args.command + "'");
    verify_mode = parse_verify_mode(args.get("verify", "cached"));
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "error: %s\n\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  try {
    const Manifest manifest = Manifest::load(args.get("bundle"));
    log_info(verify_bundle(manifest, verify_mode, default_stamp_dir()).summary());
    std::string json;
    if (args.command == "tokenize") {
      json = tokenize_json(manifest, args.get("text-file"));
    } else if (args.command == "preprocess") {
      if (args.get("image").empty() || args.get("output").empty()) throw std::invalid_argument("preprocess needs --image and --output");
      const std::vector<float> pixels = load_pixel_values(args.get("image"), manifest);
      write_atomically(args.get("output"), std::string(reinterpret_cast<const char*>(pixels.data()), pixels.size() * sizeof(float)));
      return 0;
    } else if (args.command == "adapter-import") {
      return import_adapter(manifest, args);
    } else {
      if (!manifest.has("executorch"))
        throw BundleError(manifest.file("manifest.json") + ": no executorch section; export the bundle with `mobilepeft export executorch`");
      const int threads = args.int_option("threads", 2, 1);
      set_threads(threads);
      VlmProgram program(manifest);
      if (!args.get("adapter").empty()) {
        if (!program.adapter())
          throw BundleError(manifest.file("manifest.json") + ": --adapter needs a bundle exported with --adapter-as-data");
        program.adapter()->swap(args.get("adapter"));
      }
      if (args.command == "generate") {
        if (args.get("prompt").empty()) throw std::invalid_argument("generate needs --prompt");
        const SentencePieceBpe tokenizer = SentencePieceBpe::load(manifest.file(manifest.string("tokenizer.file")));
        Generator generator(program, tokenizer, manifest);
        json = generator.generate(args.get("prompt"), args.get("image"), args.int_option("max-new-tokens", 64, 1)).to_json();
      } else if (args.command == "answer") {
        if (args.get("questions").empty()) throw std::invalid_argument("answer needs --questions");
        const std::vector<Question> questions = read_questions(args.get("questions"));
        const SentencePieceBpe tokenizer = SentencePieceBpe::load(manifest.file(manifest.string("tokenizer.file")));
        const std::string active = program.adapter() ? program.adapter()->active() : "merged";
        json = answer_json(program, tokenizer, manifest, questions, active, split_list(args.get("swap")),
                           args.int_option("max-new-tokens", 64, 1));
      } else {
        BenchSettings settings;
        settings.threads = threads;
        settings.prompt_len = args.int_option("prompt-len", settings.prompt_len, 1);
        settings.gen_len = args.int_option("gen-len", settings.gen_len, 1);
        settings.runs = args.int_option("runs", settings.runs, 1);
        settings.warmup = args.int_option("warmup", settings.warmup, 0);
        settings.swap = args.get("swap");
        json = bench_json(program, manifest, settings);
      }
    }
    if (!args.get("output").empty()) write_atomically(args.get("output"), json + "\n");
    std::printf("%s\n", json.c_str());
    return 0;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "error: %s\n\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
