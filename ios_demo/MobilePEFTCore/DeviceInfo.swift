import Foundation
import os

/// What the benchmark JSON says about the machine that ran it.
public enum DeviceInfo {
    /// `<model> (iOS <version>)`, e.g. `iPhone16,1 (iOS 18.2)`; on the simulator, the simulated model.
    public static var description: String {
        let environment = ProcessInfo.processInfo.environment
        let model = environment["SIMULATOR_MODEL_IDENTIFIER"].map { "\($0) simulator" } ?? machine
        let os = ProcessInfo.processInfo.operatingSystemVersion
        let version = os.patchVersion > 0 ? "\(os.majorVersion).\(os.minorVersion).\(os.patchVersion)"
                                          : "\(os.majorVersion).\(os.minorVersion)"
        return "\(model) (iOS \(version))"
    }

    /// The hardware model identifier (`hw.machine`).
    public static var machine: String {
        var info = utsname()
        uname(&info)
        return withUnsafeBytes(of: &info.machine) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// This process's resident-size high-water mark in MiB (`getrusage`; bytes on Darwin), as
    /// `mobilepeft bench` measures it on macOS. It only grows: it covers everything the process
    /// ran before too.
    public static func peakRSSMegabytes() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF, &usage)
        return Double(usage.ru_maxrss) / 1_048_576
    }

    /// All active cores: the size of ExecuTorch's default thread pool (cpuinfo's processor count;
    /// the Swift API cannot resize it) and what the JSON's `threads` says for Core ML, which
    /// schedules its own threads.
    public static var cores: Int { max(ProcessInfo.processInfo.activeProcessorCount, 1) }

    /// Performance cores (`hw.perflevel0.logicalcpu`), the ORT training session's thread count;
    /// all active cores where the kernel does not report performance levels.
    public static var performanceCores: Int {
        var value: Int32 = 0
        var size = MemoryLayout<Int32>.size
        if sysctlbyname("hw.perflevel0.logicalcpu", &value, &size, nil, 0) == 0, value > 0 {
            return Int(value)
        }
        return cores
    }

    /// The memory this app may still allocate before iOS stops it, in MiB (`os_proc_available_memory`,
    /// iOS 13+), plus what it already holds: what a personalization session may use.
    public static func availableMegabytes() -> Double {
        #if os(iOS)
        return Double(os_proc_available_memory()) / 1_048_576 + residentMegabytes()
        #else
        return Double(ProcessInfo.processInfo.physicalMemory) / 1_048_576
        #endif
    }

    /// This process's resident size now, in MiB (`task_info`).
    public static func residentMegabytes() -> Double {
        var info = mach_task_basic_info()
        var count = mach_msg_type_number_t(MemoryLayout<mach_task_basic_info>.size / MemoryLayout<natural_t>.size)
        let result = withUnsafeMutablePointer(to: &info) {
            $0.withMemoryRebound(to: integer_t.self, capacity: Int(count)) {
                task_info(mach_task_self_, task_flavor_t(MACH_TASK_BASIC_INFO), $0, &count)
            }
        }
        return result == KERN_SUCCESS ? Double(info.resident_size) / 1_048_576 : 0
    }
}
