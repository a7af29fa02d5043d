package dev.mobilepeft.core

/** An 8-bit RGB image, row-major, each pixel 0xRRGGBB (alpha ignored). */
class RgbImage(val width: Int, val height: Int, val pixels: IntArray) {
    init {
        require(width > 0 && height > 0 && pixels.size == width * height) { "image ${width}x$height needs ${width * height} pixels" }
    }

    fun at(x: Int, y: Int): Int = pixels[y * width + x]

    companion object {
        fun filled(width: Int, height: Int, rgb: Int): RgbImage = RgbImage(width, height, IntArray(width * height) { rgb })
        fun rgb(r: Int, g: Int, b: Int): Int = ((r and 0xFF) shl 16) or ((g and 0xFF) shl 8) or (b and 0xFF)
    }
}

/** Resizes an image to exactly width x height (the Android glue scales Bitmaps; [PilBicubicResizer] is exact PIL). */
interface Resizer {
    fun resize(image: RgbImage, width: Int, height: Int): RgbImage
}

/**
 * The manifest's image_preprocessing ("pad" aspect mode, as mobilepeft/models/image_processing.py):
 * letterbox onto a square of pad_color (centered), resize the short side to `size`, center-crop
 * `size` x `size`, then rescale / mean / std into NCHW float32 [1, 3, size, size].
 */
class ImagePreprocessor(private val spec: ImagePreprocessingSpec, private val resizer: Resizer) {
    val size: Int get() = spec.size

    fun padToSquare(image: RgbImage): RgbImage {
        val w = image.width
        val h = image.height
        if (w == h) return image
        val side = Math.max(w, h)
        val canvas = IntArray(side * side) { RgbImage.rgb(spec.padColor[0], spec.padColor[1], spec.padColor[2]) }
        val left = (side - w) / 2
        val top = (side - h) / 2
        for (y in 0 until h) System.arraycopy(image.pixels, y * w, canvas, (y + top) * side + left, w)
        return RgbImage(side, side, canvas)
    }

    fun resizeShortestSide(image: RgbImage): RgbImage {
        val w = image.width
        val h = image.height
        val short = Math.min(w, h).toLong()
        val long = Math.max(w, h).toLong()
        val newShort = spec.size
        val newLong = (spec.size.toLong() * long / short).toInt()
        val nw = if (w <= h) newShort else newLong
        val nh = if (w <= h) newLong else newShort
        if (nw == w && nh == h) return image
        return resizer.resize(image, nw, nh)
    }

    fun centerCrop(image: RgbImage): RgbImage {
        val s = spec.size
        val left = (image.width - s) / 2
        val top = (image.height - s) / 2
        if (left == 0 && top == 0 && image.width == s && image.height == s) return image
        val out = IntArray(s * s)
        for (y in 0 until s) {
            for (x in 0 until s) {
                val sx = x + left
                val sy = y + top
                // PIL's crop fills outside the image with zeros.
                out[y * s + x] = if (sx in 0 until image.width && sy in 0 until image.height) image.at(sx, sy) else 0
            }
        }
        return RgbImage(s, s, out)
    }

    /** rescale, subtract mean, divide by std; channel-planar (NCHW) float32. */
    fun normalize(image: RgbImage): FloatArray {
        val s = spec.size
        require(image.width == s && image.height == s) { "normalize needs a ${s}x$s image, got ${image.width}x${image.height}" }
        val out = FloatArray(3 * s * s)
        val rescale = spec.rescale.toFloat()
        val mean = FloatArray(3) { spec.mean[it].toFloat() }
        val std = FloatArray(3) { spec.std[it].toFloat() }
        val plane = s * s
        for (i in 0 until plane) {
            val p = image.pixels[i]
            val r = (p shr 16) and 0xFF
            val g = (p shr 8) and 0xFF
            val b = p and 0xFF
            out[i] = (r * rescale - mean[0]) / std[0]
            out[plane + i] = (g * rescale - mean[1]) / std[1]
            out[2 * plane + i] = (b * rescale - mean[2]) / std[2]
        }
        return out
    }

    fun shape(): LongArray = longArrayOf(1, 3, spec.size.toLong(), spec.size.toLong())

    fun preprocess(image: RgbImage): FloatArray = normalize(centerCrop(resizeShortestSide(padToSquare(image))))
}

/**
 * PIL's `Image.resize(..., BICUBIC)` for 8-bit RGB, reimplemented (libImaging/Resample.c):
 * separable cubic convolution (a = -0.5) with support scaled by the reduction factor, 22-bit
 * fixed-point coefficients, horizontal pass then vertical pass, each rounded to 8 bits.
 */
class PilBicubicResizer : Resizer {
    private val precisionBits = 32 - 8 - 2

    private class Coeffs(val ksize: Int, val bounds: IntArray, val kk: IntArray)

    private fun filter(xIn: Double): Double {
        val a = -0.5
        val x = Math.abs(xIn)
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
        if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a
        return 0.0
    }

    private fun precompute(inSize: Int, outSize: Int): Coeffs {
        val scale = inSize.toDouble() / outSize
        val filterscale = if (scale < 1.0) 1.0 else scale
        val support = 2.0 * filterscale
        val ksize = Math.ceil(support).toInt() * 2 + 1
        val pre = DoubleArray(outSize * ksize)
        val bounds = IntArray(outSize * 2)
        for (xx in 0 until outSize) {
            val center = (xx + 0.5) * scale
            var ww = 0.0
            val ss = 1.0 / filterscale
            var xmin = (center - support + 0.5).toInt()
            if (xmin < 0) xmin = 0
            var xmax = (center + support + 0.5).toInt()
            if (xmax > inSize) xmax = inSize
            xmax -= xmin
            for (x in 0 until xmax) {
                val w = filter((x + xmin - center + 0.5) * ss)
                pre[xx * ksize + x] = w
                ww += w
            }
            for (x in 0 until xmax) if (ww != 0.0) pre[xx * ksize + x] /= ww
            bounds[xx * 2] = xmin
            bounds[xx * 2 + 1] = xmax
        }
        val one = (1 shl precisionBits).toDouble()
        val kk = IntArray(pre.size) { i -> if (pre[i] < 0) (-0.5 + pre[i] * one).toInt() else (0.5 + pre[i] * one).toInt() }
        return Coeffs(ksize, bounds, kk)
    }

    private fun clip8(v: Int): Int {
        if (v >= (1 shl precisionBits shl 8)) return 255
        if (v <= 0) return 0
        return v shr precisionBits
    }

    override fun resize(image: RgbImage, width: Int, height: Int): RgbImage {
        var cur = image
        if (width != cur.width) {
            val c = precompute(cur.width, width)
            val out = IntArray(width * cur.height)
            for (y in 0 until cur.height) {
                for (xx in 0 until width) {
                    val xmin = c.bounds[xx * 2]
                    val n = c.bounds[xx * 2 + 1]
                    var s0 = 1 shl (precisionBits - 1)
                    var s1 = s0
                    var s2 = s0
                    for (x in 0 until n) {
                        val k = c.kk[xx * c.ksize + x]
                        val p = cur.pixels[y * cur.width + x + xmin]
                        s0 += ((p shr 16) and 0xFF) * k
                        s1 += ((p shr 8) and 0xFF) * k
                        s2 += (p and 0xFF) * k
                    }
                    out[y * width + xx] = RgbImage.rgb(clip8(s0), clip8(s1), clip8(s2))
                }
            }
            cur = RgbImage(width, cur.height, out)
        }
        if (height != cur.height) {
            val c = precompute(cur.height, height)
            val out = IntArray(cur.width * height)
            for (yy in 0 until height) {
                val ymin = c.bounds[yy * 2]
                val n = c.bounds[yy * 2 + 1]
                for (x in 0 until cur.width) {
                    var s0 = 1 shl (precisionBits - 1)
                    var s1 = s0
                    var s2 = s0
                    for (y in 0 until n) {
                        val k = c.kk[yy * c.ksize + y]
                        val p = cur.pixels[(y + ymin) * cur.width + x]
                        s0 += ((p shr 16) and 0xFF) * k
                        s1 += ((p shr 8) and 0xFF) * k
                        s2 += (p and 0xFF) * k
                    }
                    out[yy * cur.width + x] = RgbImage.rgb(clip8(s0), clip8(s1), clip8(s2))
                }
            }
            cur = RgbImage(cur.width, height, out)
        }
        return cur
    }
}
