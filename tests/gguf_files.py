"""Small hand-made GGUF files for bad-input tests."""

from __future__ import annotations

import gguf
import numpy as np


def write_gguf(path, arch: str | None, *, tensors: bool = True, **uint32_keys):
    """A small GGUF with the given architecture (None: no general.architecture at all)."""
    writer = gguf.GGUFWriter(path, arch or "llama")
    if arch is None:
        writer.kv_data[0].pop("general.architecture")
    writer.add_block_count(2)
    for key, value in uint32_keys.items():
        writer.add_uint32(key.replace("__", "."), value)
    if tensors:
        writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
