import Foundation

public extension PersonalizeReport {
    /// The training benchmark JSON (mobilepeft/export/bench.schema.json's training keys).
    func benchResult(harness: String, threads: Int) throws -> BenchResult {
        let stepStats = try BenchStats(stepTimesMs)
        var result = BenchResult()
        result.putStats("train_step_ms", stepStats)
        result.put("train_peak_rss_mb", DeviceInfo.peakRSSMegabytes())
        result.put("train_steps", steps)
        result.put("batch_size", batchSize)
        result.put("threads", threads)
        result.put("backend", "cpu")
        result.put("quantization", "none")
        result.put("device", DeviceInfo.description)
        result.put("runtime", "onnxruntime-training")
        result.put("harness", harness)
        return result
    }
}
