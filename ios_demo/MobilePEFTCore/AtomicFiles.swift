import Foundation

/// Files that appear whole or not at all: written under a temporary name beside the target,
/// then moved over it (a crash mid-write never leaves half a checkpoint), as
/// `OrtTrainer.save_checkpoint` does on the desktop.
enum AtomicFiles {
    /// `write` writes to the URL it is given; `sidecarSuffix` names a file the writer may put beside
    /// it (ORT puts a checkpoint's tensors in `<checkpoint>.data` above 2 GB), moved first.
    static func replace(_ target: URL, sidecarSuffix: String?, write: (URL) throws -> Void) throws {
        let manager = FileManager.default
        let temporary = target.deletingLastPathComponent()
            .appendingPathComponent(".\(target.lastPathComponent).tmp-\(ProcessInfo.processInfo.processIdentifier)")
        let sidecar = sidecarSuffix.map { URL(fileURLWithPath: target.path + $0) }
        let temporarySidecar = sidecarSuffix.map { URL(fileURLWithPath: temporary.path + $0) }
        defer {
            try? manager.removeItem(at: temporary)
            if let temporarySidecar { try? manager.removeItem(at: temporarySidecar) }
        }
        try? manager.removeItem(at: temporary)
        try write(temporary)
        if let sidecar, let temporarySidecar, manager.fileExists(atPath: temporarySidecar.path) {
            try move(temporarySidecar, over: sidecar)
        }
        try move(temporary, over: target)
    }

    private static func move(_ source: URL, over target: URL) throws {
        let manager = FileManager.default
        if manager.fileExists(atPath: target.path) {
            _ = try manager.replaceItemAt(target, withItemAt: source)
        } else {
            try manager.moveItem(at: source, to: target)
        }
    }
}
