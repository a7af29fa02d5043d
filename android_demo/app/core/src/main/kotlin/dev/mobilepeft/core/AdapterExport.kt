package dev.mobilepeft.core

import java.io.File

/**
 * The trained adapter as a PEFT directory, like `mobilepeft adapter from-ort`: the bundle's adapter
 * files, with `adapter_model.safetensors` (LoRA tensors under their PEFT keys) and, when the projector
 * trained, `mm_projector.safetensors`, both read from the exported inference model's initializers. What did
 * not train on the phone (the layers below a `--train-layers` bundle's top K) keeps the bundle's value.
 */
object AdapterExport {
    const val ADAPTER_FILE = "adapter_model.safetensors"
    const val PROJECTOR_FILE = "mm_projector.safetensors"
    const val META_FILE = "mobilepeft_adapter.json"
    const val PROJECTOR_PREFIX = "model.mm_projector."

    fun write(section: OnnxTrainingSection, bundleAdapterDir: File, inferenceModel: File, outDir: File) {
        val trained = OnnxInitializers.trained(section, inferenceModel)
        val projector = trained.filterKeys { it.startsWith(PROJECTOR_PREFIX) }
        val lora = LinkedHashMap(Safetensors.read(File(bundleAdapterDir, ADAPTER_FILE)))
        lora.putAll(trained.filterKeys { !it.startsWith(PROJECTOR_PREFIX) })
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
