// The trainable tensors of an ONNX Runtime training checkpoint (the file the phone's
// CheckpointState saves after trainStep/optimizerStep), read without ONNX Runtime: the checkpoint
// is a FlatBuffer (ORT's ort_training_checkpoint.fbs, identifier "ODTC"): Checkpoint{version,
// module_state{requires_grad_params: [Tensor{name, doc_string, dims, data_type, raw_data, ...}], ...}}.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace mobilepeft {

// name -> float32 values (row-major, as ORT holds them); throws BundleError naming the file.
std::map<std::string, std::vector<float>> read_ort_trainable(const std::string& checkpoint);

}  // namespace mobilepeft
