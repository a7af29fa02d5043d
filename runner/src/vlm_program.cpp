#include "vlm_program.h"

#include <chrono>

#include <executorch/extension/data_loader/mmap_data_loader.h>
#include <executorch/extension/tensor/tensor.h>

namespace mobilepeft {

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::MmapDataLoader;
using executorch::extension::module::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;

namespace {
const char* kMethods[] = {"vision_encoder", "token_embedding", "text_decoder"};

// "1.5.1" -> "1.5": programs load only in their own minor release's runtime (docs/mobile.md, "One runtime version").
std::string minor_release(const std::string& version) {
  const size_t first = version.find('.');
  const size_t second = first == std::string::npos ? std::string::npos : version.find('.', first + 1);
  return version.substr(0, second);
}

void check_runtime_version(const Manifest& manifest, const std::string& pte) {
  const std::string exported = manifest.string("executorch.runtime_version");
  const std::string runtime = MOBILEPEFT_EXECUTORCH_VERSION;
  if (minor_release(exported) != minor_release(runtime))
    throw BundleError(pte + ": exported with ExecuTorch " + exported + ", but this runner's runtime is ExecuTorch " +
                      runtime + " (manifest.json executorch.runtime_version): re-export the bundle with executorch==" +
                      runtime + ", or build the runner against ExecuTorch " + minor_release(exported) + ".x");
}

// Every method the manifest describes must be in the program, and the runner's three must be among them.
void check_methods(const Manifest& manifest, const std::string& pte, Module& module) {
  auto names = module.method_names();
  if (!names.ok()) throw BundleError(pte + ": cannot list the program's methods");
  std::string have;
  for (const auto& name : names.get()) have += (have.empty() ? "" : ", ") + name;
  for (const auto& method : manifest.keys("executorch.methods{}"))
    if (!names->count(method))
      throw BundleError(manifest.dir() + "/manifest.json: executorch.methods names '" + method + "', which " + pte +
                        " does not have (it has " + have + "): the manifest and the program come from different exports");
  for (const char* method : kMethods)
    if (!names->count(method))
      throw BundleError(pte + ": the program has no method '" + std::string(method) + "' (it has " + have +
                        "): export it with `mobilepeft export executorch`");
}
}  // namespace

VlmProgram::VlmProgram(const Manifest& manifest)
    : pte_(manifest.file(manifest.string("executorch.file"))),
      hidden_(int(manifest.integer("model.hidden_size"))),
      image_tokens_(int(manifest.integer("model.num_image_tokens"))),
      image_size_(int(manifest.integer("image_preprocessing.size"))),
      vocab_(int(manifest.integer("model.vocab_size"))) {
  check_runtime_version(manifest, pte_);
  const auto t0 = std::chrono::steady_clock::now();
  if (AdapterLayout::present(manifest)) {
    adapter_ = std::make_unique<AdapterSlot>(manifest);
    auto loader = MmapDataLoader::from(pte_.c_str(), MmapDataLoader::MlockConfig::UseMlockIgnoreErrors);
    if (!loader.ok()) throw BundleError(pte_ + ": cannot open the program");
    module_ = std::make_unique<Module>(std::make_unique<MmapDataLoader>(std::move(loader.get())), nullptr, nullptr,
                                       nullptr, adapter_->loader());
  } else {
    module_ = std::make_unique<Module>(pte_, Module::LoadMode::MmapUseMlockIgnoreErrors);
  }
  if (module_->load() != Error::Ok)
    throw BundleError(pte_ + ": ExecuTorch cannot load the program (is it a .pte from `mobilepeft export executorch`, "
                      "and was the runner built with the kernels and backend it needs?)");
  check_methods(manifest, pte_, *module_);
  for (const char* method : kMethods)
    if (module_->load_method(method) != Error::Ok)
      throw BundleError(pte_ + ": cannot load method " + method + " (missing operator or backend? see the log above)");
  load_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  // The upper bound of the decoder's dynamic token dimension, as the program states it.
  auto meta = module_->method_meta("text_decoder");
  if (meta.ok()) {
    auto input = meta->input_tensor_meta(0);
    if (input.ok() && input->sizes().size() == 3) max_tokens_per_call_ = int(input->sizes()[1]);
  }
}

std::vector<float> VlmProgram::run(const std::string& method, const std::vector<EValue>& inputs) {
  auto result = module_->execute(method, inputs);
  if (!result.ok())
    throw std::runtime_error(pte_ + ": method " + method + " failed (ExecuTorch error " +
                             std::to_string(int(result.error())) + ")");
  const auto& out = result.get()[0].toTensor();
  const float* data = out.const_data_ptr<float>();
  return std::vector<float>(data, data + out.numel());
}

std::vector<float> VlmProgram::encode_image(std::vector<float> pixels) {
  auto tensor = from_blob(pixels.data(), {1, 3, image_size_, image_size_}, ScalarType::Float);
  return run("vision_encoder", {tensor});
}

std::vector<float> VlmProgram::embed(std::vector<int64_t> ids) {
  auto tensor = from_blob(ids.data(), {1, int(ids.size())}, ScalarType::Long);
  return run("token_embedding", {tensor});
}

std::vector<float> VlmProgram::decode(const std::vector<float>& embeds, int64_t start) {
  const size_t total = embeds.size() / size_t(hidden_);
  if (total == 0) throw std::invalid_argument("text_decoder needs at least one token");
  std::vector<float> logits;
  for (size_t done = 0; done < total;) {
    const size_t n = std::min(total - done, size_t(max_tokens_per_call_));
    std::vector<float> chunk(embeds.begin() + long(done * hidden_), embeds.begin() + long((done + n) * hidden_));
    std::vector<int64_t> positions(n);
    for (size_t k = 0; k < n; ++k) positions[k] = start + int64_t(done + k);
    auto x = from_blob(chunk.data(), {1, int(n), hidden_}, ScalarType::Float);
    auto pos = from_blob(positions.data(), {int(n)}, ScalarType::Long);
    logits = run("text_decoder", {x, pos});
    done += n;
  }
  // [1, n, V] -> the last position's row.
  return std::vector<float>(logits.end() - vocab_, logits.end());
}

int argmax(const std::vector<float>& logits) {
  int best = 0;
  for (size_t k = 1; k < logits.size(); ++k)
    if (logits[k] > logits[best]) best = int(k);
  return best;
}

}  // namespace mobilepeft
