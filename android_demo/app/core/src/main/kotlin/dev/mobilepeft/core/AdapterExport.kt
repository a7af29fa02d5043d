package dev.mobilepeft.core

import java.io.File

/**
 * The trained adapter as a PEFT directory, like `mobilepeft adapter from-ort`: the bundle's adapter
 * files, with `adapter_model.safetensors` (LoRA tensors under their PEFT keys) and, when the projector
 * trained, `mm_projector.safetensors`, both read from the exported inference model's initializers.
 */
object AdapterExport {
    const val ADAPTER_FILE = "adapter_model.safetensors"
    const val PROJECTOR_FILE = "mm_projector.safetensors"
    const val META_FILE = "mobilepeft_adapter.json"

    fun write(section: OnnxTrainingSection, bundleAdapterDir: File, inferenceModel: ByteArray, outDir: File) {
        val names = section.trainable.map { it.name }.toSet()
        val found = OnnxInitializers.read(inferenceModel, names)
        val lora = LinkedHashMap<String, OnnxInitializers.Tensor>()
        val projector = LinkedHashMap<String, OnnxInitializers.Tensor>()
        for (p in section.trainable) {
            val t = found[p.name] ?: throw BundleError("the exported inference model has no parameter '${p.name}'; " +
                "it was not trained from this bundle")
            if (!t.shape.contentEquals(p.shape)) {
                throw BundleError("parameter '${p.name}' has shape ${t.shape.toList()}, ${Manifest.FILE} says ${p.shape.toList()}")
            }
            if (p.adapterKey.startsWith("model.mm_projector.")) projector[p.adapterKey] = t else lora[p.adapterKey] = t
        }
        outDir.mkdirs()
        val files = bundleAdapterDir.listFiles() ?: throw BundleError("${bundleAdapterDir.path}: the bundle's adapter directory is missing")
        for (f in files) if (f.isFile) f.copyTo(File(outDir, f.name), overwrite = true)
        Safetensors.write(File(outDir, ADAPTER_FILE), lora, mapOf("format" to "pt"))
        if (projector.isNotEmpty()) {
            Safetensors.write(File(outDir, PROJECTOR_FILE), projector, mapOf("format" to "pt"))
            val meta = File(outDir, META_FILE)
            if (meta.isFile) {
                val parsed = Json.parse(meta.readText(Charsets.UTF_8))
                if (parsed !is JsonObject) throw BundleError("${meta.path}: expected a JSON object")
                val fields = LinkedHashMap(parsed.fields)
                fields["projector_trained"] = JsonBool(true)
                meta.writeText(Json.write(JsonObject(fields), 2) + "\n", Charsets.UTF_8)
            }
        }
    }
}
