package dev.mobilepeft.core

/** One method of the manifest's `executorch.methods{}`: its inputs and outputs. */
class MethodSpec(val name: String, val inputs: List<TensorSpec>, val outputs: List<TensorSpec>)

/** The manifest's `executorch` section: the .pte program and its methods. */
class ExecuTorchSection(
    val file: String,
    val backend: String,
    val quantization: String,
    val dtype: String,
    val methods: Map<String, MethodSpec>
) {
    fun method(name: String): MethodSpec =
        methods[name] ?: throw BundleError("${Manifest.FILE}: executorch.methods has no '$name' (has ${methods.keys})")
}
