#include "ort_checkpoint.h"

#include <cstring>
#include <stdexcept>

#include "flatbuffer.h"
#include "manifest.h"

namespace mobilepeft {

namespace {
constexpr int kOnnxFloat = 1;  // TensorProto.DataType FLOAT
enum CheckpointField { kModuleState = 1 };
enum ModuleStateField { kRequiresGradParams = 0, kHasExternalData = 3 };
enum TensorField { kName = 0, kDims = 2, kDataType = 3, kRawData = 4 };
}  // namespace

std::map<std::string, std::vector<float>> read_ort_trainable(const std::string& checkpoint) {
  const std::string text = read_file(checkpoint);
  const std::vector<uint8_t> buffer(text.begin(), text.end());
  if (buffer.size() < 8 || std::memcmp(buffer.data() + 4, "ODTC", 4) != 0)
    throw BundleError(checkpoint + ": not an ONNX Runtime training checkpoint (no ODTC identifier); pass the "
                      "file CheckpointState.saveCheckpoint wrote (or `mobilepeft personalize`'s OUT/checkpoint)");
  std::map<std::string, std::vector<float>> out;
  try {
    const fb::Table state = fb::Table::root(buffer).table(kModuleState);
    if (state.scalar<uint8_t>(kHasExternalData, 0))
      throw BundleError(checkpoint + ": the checkpoint keeps its tensors in external data (a > 2 GB model); "
                        "adapter-import reads adapter checkpoints, whose tensors are inline");
    for (size_t i = 0; i < state.vector_length(kRequiresGradParams); ++i) {
      const fb::Table tensor = state.table_at(kRequiresGradParams, i);
      const std::string name = tensor.string(kName);
      if (tensor.scalar<int32_t>(kDataType, 0) != kOnnxFloat)
        throw BundleError(checkpoint + ": trainable tensor '" + name + "' is not float32");
      size_t count = 1;
      for (int64_t d : tensor.scalars<int64_t>(kDims)) count *= size_t(d);
      const auto raw = tensor.bytes(kRawData);
      if (raw.second != count * sizeof(float))
        throw BundleError(checkpoint + ": trainable tensor '" + name + "' holds " + std::to_string(raw.second) +
                          " bytes for " + std::to_string(count) + " values (truncated or damaged checkpoint)");
      std::vector<float> values(count);
      std::memcpy(values.data(), raw.first, raw.second);
      out[name] = std::move(values);
    }
  } catch (const std::out_of_range& e) {
    throw BundleError(checkpoint + ": damaged checkpoint (" + e.what() + ")");
  }
  return out;
}

}  // namespace mobilepeft
