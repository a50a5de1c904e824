"""A strict reader of GGUF headers, run before a file is handed to llama.cpp.

llama.cpp rejects most bad files with an error, but a file that is cut short or
whose header lies about its contents is better caught here, with a specific
Python exception, before any native code touches it. Only the header is read:
metadata values, tensor descriptions and the extent of the tensor data.
"""

from __future__ import annotations

import math
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
UINT32 = 4
# Arrays longer than this (vocabularies) appear in metadata as "<array of N>"; see GGUFHeader.arrays.
_MAX_ARRAY_KEPT = 64
# Numeric arrays up to this length (per-layer values; llama.cpp allows 512 layers) are kept in GGUFHeader.arrays.
_MAX_NUMERIC_ARRAY_KEPT = 1024

# ggml type id -> (elements per block, bytes per block): ggml's type traits (ggml/src/ggml.c of the pinned
# llama.cpp: blck_size and type_size). Ids missing here were removed from ggml; no GGUF may use them.
_GGML_BLOCKS = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 36),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
    40: (64, 36),
    41: (128, 18),
    42: (64, 18),
}
GGML_TYPE_NAMES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    15: "Q8_K",
    16: "IQ2_XXS",
    17: "IQ2_XS",
    18: "IQ3_XXS",
    19: "IQ1_S",
    20: "IQ4_NL",
    21: "IQ3_S",
    22: "IQ2_S",
    23: "IQ4_XS",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    29: "IQ1_M",
    30: "BF16",
    34: "TQ1_0",
    35: "TQ2_0",
    39: "MXFP4",
    40: "NVFP4",
    41: "Q1_0",
    42: "Q2_0",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int | None:
        """Bytes of data, or None for a ggml type this reader does not know."""
        block = _GGML_BLOCKS.get(self.ggml_type)
        if block is None:
            return None
        return self.n_elements // block[0] * block[1]

    @property
    def type_name(self) -> str:
        return GGML_TYPE_NAMES.get(self.ggml_type, f"type {self.ggml_type}")


@dataclass(frozen=True)
class LongArray:
    """A metadata array too long for GGUFHeader.metadata: its length, item type and, where kept, its items."""

    count: int
    item_type: int
    values: tuple | None  # every string array; numeric ones up to _MAX_NUMERIC_ARRAY_KEPT items


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, object]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    file_size: int
    types: dict[str, int]  # metadata key -> GGUF value type id (9 for arrays)
    arrays: dict[str, LongArray]  # metadata key -> the arrays shown as "<array of N>" in metadata
    not_utf8: tuple[str, ...] = ()  # keys holding a string (or strings) that is not UTF-8, shown with U+FFFD

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


class _Reader:
    def __init__(self, stream: BinaryIO, path: Path):
        self.stream = stream
        self.path = path
        self.invalid_utf8 = False  # set when the last string value read was not UTF-8

    def fail(self, what: str) -> InvalidModelError:
        return InvalidModelError(f"{self.path}: {what}")

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise self.fail("file is truncated (header ends early)")
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self, what: str = "a string value") -> str:
        n = self.unpack("<Q")
        if n > 1 << 26:
            raise self.fail(f"implausible string length {n}")
        raw = self.read(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            # llama.cpp hands names and keys to Python as str; text values are shown with replacements.
            if what != "a string value":
                raise self.fail(f"{what} is not valid UTF-8: {raw[:40]!r}") from None
            self.invalid_utf8 = True
            return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str, arrays: dict[str, LongArray]):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            return self.array(key, arrays)
        raise self.fail(f"metadata key {key!r} has unknown value type {vtype}")

    def array(self, key: str, arrays: dict[str, LongArray]):
        itype, count = self.unpack("<I"), self.unpack("<Q")
        if itype == _ARRAY:
            # GGUF has no nested arrays (llama.cpp refuses them), and reading them would recurse without bound.
            raise self.fail(f"metadata key {key!r} holds an array of arrays, which GGUF does not allow")
        if itype not in _SCALARS and itype != _STRING:
            raise self.fail(f"metadata key {key!r} is an array of unknown value type {itype}")
        if count > 1 << 32:
            raise self.fail(f"implausible array length {count}")
        if count <= _MAX_ARRAY_KEPT:
            return [self.value(itype, key, arrays) for _ in range(count)]
        if itype == _STRING:
            values = tuple(self.string() for _ in range(count))
        elif count <= _MAX_NUMERIC_ARRAY_KEPT:
            fmt = _SCALARS[itype]
            values = struct.unpack(f"<{count}{fmt[1:]}", self.read(count * struct.calcsize(fmt)))
        else:
            values = None
            self.skip(count * struct.calcsize(_SCALARS[itype]))
        arrays[key] = LongArray(count, itype, values)
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
    metadata: dict[str, object] = {}
    types: dict[str, int] = {}
    arrays: dict[str, LongArray] = {}
    not_utf8: list[str] = []
    for _ in range(n_kv):
        key = r.string("a metadata key name")
        if key in metadata:
            raise r.fail(f"metadata key {key!r} appears twice")
        types[key] = r.unpack("<I")
        r.invalid_utf8 = False
        metadata[key] = r.value(types[key], key, arrays)
        if r.invalid_utf8:
            not_utf8.append(key)
    tensors = tuple(_tensor_info(r) for _ in range(n_tensors))
    alignment = _alignment(r, metadata, types)
    data_offset = -(-r.stream.tell() // alignment) * alignment
    header = GGUFHeader(r.path, version, metadata, tensors, data_offset, file_size, types, arrays, tuple(not_utf8))
    _check_extents(r, header)
    return header


def _alignment(r: _Reader, metadata: dict[str, object], types: dict[str, int]) -> int:
    if "general.alignment" not in metadata:
        return DEFAULT_ALIGNMENT
    value = metadata["general.alignment"]
    if types["general.alignment"] != UINT32:
        raise r.fail(f"general.alignment must be a uint32, not {value!r}")
    if not isinstance(value, int) or value <= 0 or value & (value - 1):
        raise r.fail(f"general.alignment {value} is not a power of two")
    return value


def _tensor_info(r: _Reader) -> TensorInfo:
    name = r.string("a tensor name")
    n_dims = r.unpack("<I")
    if n_dims > 8:
        raise r.fail(f"tensor {name!r} has {n_dims} dimensions")
    shape = tuple(r.unpack("<Q") for _ in range(n_dims))
    ggml_type = r.unpack("<I")
    if ggml_type not in _GGML_BLOCKS:
        raise r.fail(f"tensor {name!r} has unknown ggml type {ggml_type}")
    block = _GGML_BLOCKS[ggml_type][0]
    if shape and shape[0] % block:
        raise r.fail(
            f"tensor {name!r} has rows of {shape[0]} values, not a whole number of "
            f"{GGML_TYPE_NAMES[ggml_type]} blocks of {block}"
        )
    return TensorInfo(name, shape, ggml_type, r.unpack("<Q"))


def _check_extents(r: _Reader, header: GGUFHeader) -> None:
    for tensor in header.tensors:
        end = header.data_offset + tensor.offset + (tensor.nbytes or 0)
        if end > header.file_size:
            raise r.fail(
                f"file is truncated: tensor {tensor.name!r} ends at byte {end}, the file has {header.file_size}"
            )
