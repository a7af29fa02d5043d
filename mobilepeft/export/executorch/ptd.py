"""ExecuTorch's FlatTensor data file (``.ptd``): read one, and write a new one in a bundle's layout.

A ``.ptd`` is ``[u32 root offset]["FT01"][40-byte header "FH01": flatbuffer offset/size, segment
base offset/size][flatbuffer FlatTensor{version, segments[{offset, size}], named_data[{key,
segment_index, tensor_layout{scalar_type, sizes, dim_order}}]}][padding][data segments]``.

Every adapter file of one bundle has the same *head* (all bytes before the first tensor: names,
shapes, dtypes, offsets) and differs only in the tensor bytes, so a writer on a phone needs no
flatbuffer library: it copies the head of the bundle's ``adapter.ptd`` and puts each tensor's
bytes at the offset the manifest states (:func:`fill_ptd`; the Kotlin, Swift and C++ writers do
the same). The reader parses the flatbuffer itself, so a foreign file is refused naming the
tensor that does not fit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilepeft.errors import UserError

MAGIC = b"FT01"
HEADER_MAGIC = b"FH01"
HEADER_OFFSET = 8
HEADER_LENGTH = 40
#: ExecuTorch's ScalarType codes of the dtypes an adapter file may hold.
SCALAR_TYPES = {6: np.dtype("<f4"), 5: np.dtype("<f2"), 7: np.dtype("<f8")}


@dataclass(frozen=True)
class PtdTensor:
    key: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # from the start of the file
    nbytes: int


class _Table:
    """A flatbuffer table at ``pos`` of ``buf`` (little-endian), fields read through its vtable."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable_len = struct.unpack_from("<H", buf, self.vtable)[0]

    def _field(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot >= self.vtable_len:
            return None
        rel = struct.unpack_from("<H", self.buf, self.vtable + slot)[0]
        return self.pos + rel if rel else None

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        at = self._field(index)
        return default if at is None else struct.unpack_from("<" + fmt, self.buf, at)[0]

    def _target(self, index: int) -> int | None:
        at = self._field(index)
        return None if at is None else at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, index: int) -> _Table | None:
        at = self._target(index)
        return None if at is None else _Table(self.buf, at)

    def string(self, index: int) -> str:
        at = self._target(index)
        if at is None:
            return ""
        n = struct.unpack_from("<I", self.buf, at)[0]
        return self.buf[at + 4:at + 4 + n].decode("utf-8")

    def vector(self, index: int, fmt: str | None) -> list:
        """Scalars (``fmt``) or tables (``fmt=None``)."""
        at = self._target(index)
        if at is None:
            return []
        n = struct.unpack_from("<I", self.buf, at)[0]
        if fmt is not None:
            return list(struct.unpack_from(f"<{n}{fmt}", self.buf, at + 4))
        return [_Table(self.buf, at + 4 + 4 * k + struct.unpack_from("<I", self.buf, at + 4 + 4 * k)[0])
                for k in range(n)]


def read_layout(path: str | Path, data: bytes | None = None) -> dict[str, PtdTensor]:
    """Every named tensor of a ``.ptd`` with its dtype, shape and byte range; refuses a damaged file."""
    path = Path(path)
    data = path.read_bytes() if data is None else data
    hint = "write it again from the bundle's adapter.ptd (`mobilepeft adapter to-ptd`), or re-export the bundle"
    if len(data) < HEADER_OFFSET + HEADER_LENGTH or data[4:8] != MAGIC or data[8:12] != HEADER_MAGIC:
        raise UserError("not an ExecuTorch FlatTensor data file (.ptd): bad magic or too short", path=path, hint=hint)
    *_, seg_base, seg_size = struct.unpack_from("<4sIQQQQ", data, HEADER_OFFSET)
    if seg_base + seg_size > len(data):
        raise UserError(f"file is {len(data)} bytes but its header says the data ends at byte {seg_base + seg_size} "
                        "(truncated)", path=path, hint=hint)
    try:
        root = _Table(data, struct.unpack_from("<I", data, 0)[0])
        segments = [(s.scalar(0, "Q"), s.scalar(1, "Q")) for s in root.vector(1, None)]
        tensors = {}
        for named in root.vector(2, None):
            key, layout = named.string(0), named.table(2)
            index = named.scalar(1, "I")
            if layout is None or index >= len(segments):
                raise UserError(f"tensor {key!r} has no layout or no data segment", path=path, hint=hint)
            code = layout.scalar(0, "b")
            if code not in SCALAR_TYPES:
                raise UserError(f"tensor {key!r} has ExecuTorch scalar type {code}; adapter files hold float32",
                                path=path, hint=hint)
            shape = tuple(layout.vector(1, "i"))
            offset, size = segments[index]
            expected = int(np.prod(shape, dtype=np.int64)) * SCALAR_TYPES[code].itemsize
            if size != expected or seg_base + offset + size > len(data):
                raise UserError(f"tensor {key!r}: segment of {size} bytes for shape {list(shape)} "
                                f"({expected} bytes expected) or past the end of the file", path=path, hint=hint)
            tensors[key] = PtdTensor(key, SCALAR_TYPES[code].name, shape, seg_base + offset, size)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise UserError(f"damaged FlatTensor metadata ({exc})", path=path, hint=hint) from exc
    return tensors


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.ptd`` as a numpy array (a copy)."""
    data = Path(path).read_bytes()
    return {key: np.frombuffer(data, np.dtype(t.dtype).newbyteorder("<"), count=t.nbytes // np.dtype(t.dtype).itemsize,
                               offset=t.offset).reshape(t.shape).copy()
            for key, t in read_layout(path, data).items()}


def head_size(layout: dict[str, PtdTensor]) -> int:
    """Bytes before the first tensor: what every adapter file of one bundle shares."""
    return min(t.offset for t in layout.values())


def fill_ptd(head: bytes, total_bytes: int, tensors: dict[str, tuple[int, np.ndarray]]) -> bytes:
    """A ``.ptd`` of ``total_bytes`` with the shared ``head`` and each array at its offset (``{key: (offset, array)}``)."""
    out = bytearray(total_bytes)
    out[:len(head)] = head
    for offset, array in tensors.values():
        raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        out[offset:offset + len(raw)] = raw
    return bytes(out)
