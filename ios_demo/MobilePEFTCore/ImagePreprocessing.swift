import CoreGraphics
import Foundation

/// The bundle's image preprocessing (manifest `image_preprocessing`), as
/// `mobilepeft.models.image_processing.preprocess_images` does it: paste the image centred on a
/// square canvas of `pad_color`, resize the shortest side to `size` (CoreGraphics high-quality
/// interpolation standing in for PIL's bicubic), centre-crop `size`x`size`, then
/// `(value * rescale - mean[c]) / std[c]` per channel, laid out NCHW as float32.
///
/// CoreGraphics resamples a little differently from PIL and composites transparent pixels over
/// the pad colour (PIL drops alpha), so pixels agree with the host closely, not bit for bit.
public struct ImagePreprocessor {
    public let size: Int
    private let padColor: [CGFloat]
    private let rescale: Double
    private let mean: [Double]
    private let std: [Double]

    public init(manifest: Manifest) throws {
        let expected = [("aspect", "pad"), ("resize", "shortest_side_bicubic"), ("crop", "center"), ("layout", "NCHW")]
        let found = try [manifest.string("image_preprocessing.aspect"), manifest.string("image_preprocessing.resize"),
                         manifest.string("image_preprocessing.crop"), manifest.string("image_preprocessing.layout")]
        for ((key, want), got) in zip(expected, found) where got != want {
            throw MobilePEFTError("\(Manifest.fileName): image_preprocessing.\(key) is \"\(got)\"; this app implements \"\(want)\"")
        }
        size = try manifest.int("image_preprocessing.size")
        let pad = try manifest.ints("image_preprocessing.pad_color[]")
        rescale = try manifest.double("image_preprocessing.rescale")
        mean = try manifest.doubles("image_preprocessing.mean[]")
        std = try manifest.doubles("image_preprocessing.std[]")
        guard size > 0, pad.count == 3, mean.count == 3, std.count == 3, !std.contains(0) else {
            throw MobilePEFTError("\(Manifest.fileName): image_preprocessing needs a positive size and three pad_color, mean and std values (std non-zero)")
        }
        padColor = pad.map { CGFloat($0) / 255 }
    }

    /// Floats per image: 3 x size x size.
    public var valueCount: Int { 3 * size * size }

    /// `pixel_values` of one image, `[3, size, size]` flattened (channel-major).
    public func pixelValues(_ image: CGImage) throws -> [Float] {
        let square = try padToSquare(image)
        // Shortest side to `size`: the padded image is square, so it becomes size x size and the
        // centre crop (host: _resize_shortest_side, then _center_crop) keeps all of it.
        let context = try bitmap(width: size, height: size)
        context.interpolationQuality = .high
        context.draw(square, in: CGRect(x: 0, y: 0, width: size, height: size))
        guard let data = context.data else { throw MobilePEFTError("CoreGraphics returned no pixel buffer") }
        let rowBytes = context.bytesPerRow
        let pixels = data.bindMemory(to: UInt8.self, capacity: rowBytes * size)
        let plane = size * size
        var values = [Float](repeating: 0, count: 3 * plane)
        for y in 0..<size {
            let row = pixels + y * rowBytes
            for x in 0..<size {
                for c in 0..<3 {
                    let raw = Double(row[x * 4 + c])
                    values[c * plane + y * size + x] = Float((raw * rescale - mean[c]) / std[c])
                }
            }
        }
        return values
    }

    /// The image centred on a `max(w, h)` square of the pad colour (PIL's paste offsets).
    private func padToSquare(_ image: CGImage) throws -> CGImage {
        let width = image.width, height = image.height
        guard width > 0, height > 0 else { throw MobilePEFTError("the image is empty") }
        let side = max(width, height)
        let context = try bitmap(width: side, height: side)
        let left = (side - width) / 2, top = (side - height) / 2
        // CoreGraphics puts the origin bottom-left: the top offset becomes a bottom one.
        context.interpolationQuality = .none
        context.draw(image, in: CGRect(x: left, y: side - height - top, width: width, height: height))
        guard let square = context.makeImage() else { throw MobilePEFTError("CoreGraphics could not pad the image") }
        return square
    }

    /// An sRGB RGBA8 canvas filled with the pad colour (row 0 of its buffer is the top row).
    private func bitmap(width: Int, height: Int) throws -> CGContext {
        guard let space = CGColorSpace(name: CGColorSpace.sRGB),
              let context = CGContext(data: nil, width: width, height: height, bitsPerComponent: 8, bytesPerRow: 0,
                                      space: space,
                                      bitmapInfo: CGImageAlphaInfo.premultipliedLast.rawValue | CGBitmapInfo.byteOrder32Big.rawValue) else {
            throw MobilePEFTError("CoreGraphics could not create a \(width)x\(height) bitmap")
        }
        context.setFillColor(red: padColor[0], green: padColor[1], blue: padColor[2], alpha: 1)
        context.fill(CGRect(x: 0, y: 0, width: width, height: height))
        return context
    }
}
