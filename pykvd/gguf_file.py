"""A strict reader of GGUF headers, run before a file is handed to llama.cpp.

llama.cpp rejects most bad files with an error, but a file that is cut short or
whose header lies about its contents is better caught here, with a specific
Python exception, before any native code touches it. Only the header is read:
metadata values, tensor descriptions and the extent of the tensor data.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import InvalidModelError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Value type id -> struct format, for the fixed-size scalar types.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays longer than this (vocabularies) are skipped, not materialised.
_MAX_ARRAY_KEPT = 64

# ggml type id -> (elements per block, bytes per block), for checking data extents.
_GGML_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section

    @property
    def nbytes(self) -> int | None:
        """Bytes of data, or None for a ggml type this reader does not know."""
        block = _GGML_BLOCKS.get(self.ggml_type)
        if block is None:
            return None
        elements = 1
        for dim in self.shape:
            elements *= dim
        return elements // block[0] * block[1]


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, object]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    file_size: int

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


class _Reader:
    def __init__(self, stream: BinaryIO, path: Path):
        self.stream = stream
        self.path = path

    def fail(self, what: str) -> InvalidModelError:
        return InvalidModelError(f"{self.path}: {what}")

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise self.fail("file is truncated (header ends early)")
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 26:
            raise self.fail(f"implausible string length {n}")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            return self.array()
        raise self.fail(f"unknown metadata value type {vtype}")

    def array(self):
        itype, count = self.unpack("<I"), self.unpack("<Q")
        if count > 1 << 32:
            raise self.fail(f"implausible array length {count}")
        if count <= _MAX_ARRAY_KEPT:
            return [self.value(itype) for _ in range(count)]
        if itype in _SCALARS:
            self.skip(count * struct.calcsize(_SCALARS[itype]))
        else:
            for _ in range(count):
                self.value(itype)
        return f"<array of {count}>"

    def skip(self, n: int) -> None:
        start = self.stream.tell()
        self.stream.seek(n, os.SEEK_CUR)
        if self.stream.tell() - start != n or self.stream.tell() > os.fstat(self.stream.fileno()).st_size:
            raise self.fail("file is truncated (header ends early)")


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and check a GGUF header; raise InvalidModelError if the file is not a whole GGUF."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            return _parse(_Reader(stream, path), os.fstat(stream.fileno()).st_size)
    except OSError as exc:
        raise InvalidModelError(f"{path}: cannot read file ({exc.strerror})") from exc


def _parse(r: _Reader, file_size: int) -> GGUFHeader:
    magic = r.stream.read(4)
    if magic != GGUF_MAGIC:
        raise r.fail("not a GGUF file (bad magic)")
    version = r.unpack("<I")
    if version not in SUPPORTED_VERSIONS:
        raise r.fail(f"unsupported GGUF version {version}")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    if n_tensors > 1 << 20 or n_kv > 1 << 20:
        raise r.fail("implausible tensor or metadata count")
    metadata = {}
    for _ in range(n_kv):
        key = r.string()
        metadata[key] = r.value(r.unpack("<I"))
    tensors = tuple(_tensor_info(r) for _ in range(n_tensors))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT) or DEFAULT_ALIGNMENT)
    data_offset = -(-r.stream.tell() // alignment) * alignment
    header = GGUFHeader(r.path, version, metadata, tensors, data_offset, file_size)
    _check_extents(r, header)
    return header


def _tensor_info(r: _Reader) -> TensorInfo:
    name = r.string()
    n_dims = r.unpack("<I")
    if n_dims > 8:
        raise r.fail(f"tensor {name!r} has {n_dims} dimensions")
    shape = tuple(r.unpack("<Q") for _ in range(n_dims))
    return TensorInfo(name, shape, r.unpack("<I"), r.unpack("<Q"))


def _check_extents(r: _Reader, header: GGUFHeader) -> None:
    for tensor in header.tensors:
        end = header.data_offset + tensor.offset + (tensor.nbytes or 0)
        if end > header.file_size:
            raise r.fail(
                f"file is truncated: tensor {tensor.name!r} ends at byte {end}, "
                f"the file has {header.file_size}"
            )
