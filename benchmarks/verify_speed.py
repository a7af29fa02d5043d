"""What a full bundle verification costs: SHA-256 of a file the way ``read_bundle(verify="full")`` hashes it.

Writes a ``--gb`` GB file of random bytes to a temporary folder, then times
``mobilepeft.export.bundle.file_record`` on it (size + SHA-256, the per-file work of a full
verification) ``--repeats`` times; the file is in the page cache after writing, so this is the
hashing cost, not the disk's.

    python benchmarks/verify_speed.py

Writes docs/results/verify_speed.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import RESULTS, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="file size in GB (1e9 bytes)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output", type=Path, default=RESULTS / "verify_speed.json")
    args = ap.parse_args()
    from mobilepeft.export.bundle import file_record

    size = int(args.gb * 1e9)
    with tempfile.TemporaryDirectory(prefix="verify-speed-") as tmp:
        path = Path(tmp) / "model.pte"
        chunk = os.urandom(64 * 2**20)
        with open(path, "wb") as fh:
            for start in range(0, size, len(chunk)):
                fh.write(chunk[: min(len(chunk), size - start)])
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            file_record(path)
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    result = {"benchmark": "verify_speed", "bytes": size, "seconds": times, "median_s": median,
              "seconds_per_gb": median / (size / 1e9)}
    print(f"SHA-256 of {size / 1e9:.1f} GB: median {median:.2f} s ({result['seconds_per_gb']:.2f} s per GB)")
    write_result(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
