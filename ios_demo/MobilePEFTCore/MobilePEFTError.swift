import Foundation

/// Every failure the core reports: one sentence naming the file, the manifest path or the call
/// that failed, so the app can show it as it is.
public struct MobilePEFTError: LocalizedError, CustomStringConvertible {
    public let message: String

    public init(_ message: String) {
        self.message = message
    }

    public var errorDescription: String? { message }
    public var description: String { message }
}
