"""The model's files in memory, as the engine reads them: JSON documents and tensor views.

The files come from a decrypted bundle (``keystore.bundle.open_bundle``: one
private buffer, every file a ``memoryview`` into it) or, for benchmarks and
parity checks, from a plaintext folder. Nothing here copies, unpickles or
writes: each safetensors tensor is a ``torch.frombuffer`` view into the
file's bytes.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from search.engine.errors import EngineError

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def json_file(files: Mapping[str, memoryview], name: str) -> Any:
    """The parsed JSON file ``name``, or None when the model has no such file."""
    if name not in files:
        return None
    try:
        return json.loads(bytes(files[name]))
    except ValueError as exc:
        raise EngineError(f"the sealed {name} is not valid JSON ({exc})") from None


def safetensors_views(data: memoryview, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a view into ``data``: no copy, no pickle."""
    try:
        header_length = int.from_bytes(data[:8], "little")
        header = json.loads(bytes(data[8 : 8 + header_length]))
    except ValueError as exc:
        raise EngineError(f"{name} has an unreadable safetensors header ({exc})") from None
    base = 8 + header_length
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise EngineError(f"{name}: tensor {key} has unsupported dtype {info.get('dtype')}")
        shape = [int(n) for n in info["shape"]]
        begin, end = (int(n) for n in info["data_offsets"])
        count = math.prod(shape)
        if end - begin != count * dtype.itemsize or base + end > len(data) or begin < 0:
            raise EngineError(f"{name}: tensor {key} does not fit its declared shape and offsets")
        if count == 0:
            tensors[key] = torch.empty(shape, dtype=dtype)
        else:
            tensors[key] = torch.frombuffer(data, dtype=dtype, count=count, offset=base + begin).view(shape)
    return tensors


def weights(files: Mapping[str, memoryview]) -> dict[str, torch.Tensor]:
    """All top-level safetensors files (one, or the shards of a large model) as views."""
    names = sorted(n for n in files if "/" not in n and n.endswith(".safetensors"))
    if not names:
        if any(n.endswith(".bin") and "/" not in n for n in files):
            raise EngineError(
                "the bundle holds pickled weights (pytorch_model.bin), which are never loaded; "
                "re-seal the model folder with `manage.py model_seal`, which converts them to safetensors"
            )
        raise EngineError("the bundle holds no safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for name in names:
        state.update(safetensors_views(files[name], name))
    return state


def plaintext_folder_files(folder: str | os.PathLike) -> dict[str, memoryview]:
    """Every file of a plaintext model folder (hidden ones excepted), keyed as a bundle keys them."""
    root = Path(folder)
    return {
        str(path.relative_to(root)): memoryview(path.read_bytes())
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    }
