package dev.mobilepeft.core

/** Python's random.Random (MT19937, seeded from an int) — enough of it for `shuffle`, so batches equal the desktop's. */
class PyRandom(seed: Long) {
    private val mt = LongArray(624)
    private var index = 624

    init {
        var n = Math.abs(seed)
        val key = ArrayList<Long>()
        if (n == 0L) key.add(0L)
        while (n > 0) {
            key.add(n and 0xFFFFFFFFL)
            n = n ushr 32
        }
        initGenrand(19650218L)
        var i = 1
        var j = 0
        var k = Math.max(624, key.size)
        while (k > 0) {
            mt[i] = ((mt[i] xor ((mt[i - 1] xor (mt[i - 1] ushr 30)) * 1664525L)) + key[j] + j) and 0xFFFFFFFFL
            i++
            j++
            if (i >= 624) { mt[0] = mt[623]; i = 1 }
            if (j >= key.size) j = 0
            k--
        }
        k = 623
        while (k > 0) {
            mt[i] = ((mt[i] xor ((mt[i - 1] xor (mt[i - 1] ushr 30)) * 1566083941L)) - i) and 0xFFFFFFFFL
            i++
            if (i >= 624) { mt[0] = mt[623]; i = 1 }
            k--
        }
        mt[0] = 0x80000000L
    }

    private fun initGenrand(s: Long) {
        mt[0] = s and 0xFFFFFFFFL
        for (i in 1 until 624) mt[i] = (1812433253L * (mt[i - 1] xor (mt[i - 1] ushr 30)) + i) and 0xFFFFFFFFL
        index = 624
    }

    fun nextUInt32(): Long {
        if (index >= 624) {
            for (kk in 0 until 624) {
                val y = (mt[kk] and 0x80000000L) or (mt[(kk + 1) % 624] and 0x7FFFFFFFL)
                mt[kk] = mt[(kk + 397) % 624] xor (y ushr 1) xor (if (y and 1L != 0L) 0x9908B0DFL else 0L)
            }
            index = 0
        }
        var y = mt[index++]
        y = y xor (y ushr 11)
        y = y xor ((y shl 7) and 0x9D2C5680L)
        y = y xor ((y shl 15) and 0xEFC60000L)
        y = y xor (y ushr 18)
        return y and 0xFFFFFFFFL
    }

    fun getrandbits(k: Int): Long {
        require(k in 1..32)
        return nextUInt32() ushr (32 - k)
    }

    fun randbelow(n: Int): Int {
        val k = 32 - Integer.numberOfLeadingZeros(n)
        var r = getrandbits(k)
        while (r >= n) r = getrandbits(k)
        return r.toInt()
    }

    fun <T> shuffle(x: MutableList<T>) {
        for (i in x.size - 1 downTo 1) {
            val j = randbelow(i + 1)
            val t = x[i]
            x[i] = x[j]
            x[j] = t
        }
    }
}
