package dev.mobilepeft.core

/** One method of the manifest's `executorch.methods{}`: its inputs and outputs. */
class MethodSpec(val name: String, val inputs: List<TensorSpec>, val outputs: List<TensorSpec>)

/**
 * One tensor of the bundle's adapter file (`executorch.adapter.tensors[]`): its name in the .ptd, the
 * PEFT / ONNX Runtime bundle name of the trained tensor it holds, and where its bytes go. `transposed`:
 * stored as the transpose of the trained tensor (A^T [in, r], B^T [r, out]; docs/on-device-loop.md).
 */
class AdapterTensorSpec(
    val key: String,
    val adapterKey: String,
    val dtype: String,
    val shape: LongArray,
    val transposed: Boolean,
    val scaling: Double,
    val offset: Long,
    val bytes: Long
)

/** The manifest's `executorch.adapter`: the LLM's adapter kept as data in a replaceable FlatTensor file. */
class AdapterSection(
    val file: String,
    val format: String,
    val bytes: Long,
    val headBytes: Long,
    val headSha256: String,
    val tensors: List<AdapterTensorSpec>
)

/** The manifest's `executorch` section: the .pte program, its methods and, when kept as data, its adapter file. */
class ExecuTorchSection(
    val file: String,
    val backend: String,
    val quantization: String,
    val dtype: String,
    val methods: Map<String, MethodSpec>,
    val adapter: AdapterSection?
) {
    fun method(name: String): MethodSpec =
        methods[name] ?: throw BundleError("${Manifest.FILE}: executorch.methods has no '$name' (has ${methods.keys})")
}
