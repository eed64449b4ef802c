"""Bringing pickled weights into the sealed format: legacy AES-CBC files and pytorch_model.bin.

Pickle is only ever read here, at sealing time, with ``torch.load(...,
weights_only=True)`` (which refuses arbitrary objects), and the result is
converted to safetensors in memory so that no plaintext conversion is written
to disk. The engine itself never unpickles anything.

``seal_model_folder`` and ``reseal_legacy_cbc`` are what ``manage.py
model_seal`` runs; both also seal the encoder's ONNX graph for the CPU,
exported in memory (``search.onnx_export``).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import save as safetensors_bytes

from keystore.bundle import DEFAULT_CHUNK_SIZE, BundleError, decrypt_legacy_cbc
from search.onnx_export import with_onnx_graph
from search.sealing import model_folder_files, seal_folder

PICKLED_WEIGHTS_SUFFIX = ".bin"
_STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model")


class LegacyModelError(BundleError):
    """Pickled weights that cannot be converted (not a state dict, or refused by weights_only)."""


def _as_state_dict(loaded: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping) and len(loaded) == 1:
        (only_key,) = loaded
        if only_key in _STATE_DICT_WRAPPERS and isinstance(loaded[only_key], Mapping):
            loaded = loaded[only_key]
    if not (
        isinstance(loaded, Mapping)
        and loaded
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items())
    ):
        raise LegacyModelError(f"{source} does not hold a state dict (a mapping of names to tensors)")
    return dict(loaded)


def load_state_dict_safely(source: bytes | str | os.PathLike, name: str) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of bytes or a file; only tensors and containers are accepted."""
    try:
        if isinstance(source, (bytes, bytearray)):
            loaded = torch.load(io.BytesIO(source), map_location="cpu", weights_only=True)
        else:
            # mmap keeps a large pytorch_model.bin out of memory until it is converted
            loaded = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # UnpicklingError for refused objects, RuntimeError for non-zip data, ...
        raise LegacyModelError(f"{name} cannot be loaded as weights only ({exc.__class__.__name__}: {exc})") from None
    return _as_state_dict(loaded, name)


def state_dict_to_safetensors(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialize a state dict as safetensors bytes, untying shared tensors (safetensors refuses them)."""
    storages: set[int] = set()
    tensors = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        storage = tensor.untyped_storage().data_ptr()
        if storage in storages and tensor.numel():
            tensor = tensor.clone()
        storages.add(storage)
        tensors[name] = tensor.contiguous()
    return safetensors_bytes(tensors, metadata={"format": "pt"})


def prepare_model_folder(src: str | os.PathLike) -> tuple[dict[str, bytes], list[str]]:
    """In-memory replacements that make ``src`` loadable without pickle: ``(extra_files, skip)``.

    Every top-level ``*.bin`` weights file (``pytorch_model.bin`` or its shards)
    becomes the matching ``model*.safetensors``; the pickle files and their index
    are left out of the bundle. A folder that already has safetensors weights is
    sealed as it is (its ``.bin`` duplicates are left out).
    """
    root = Path(src)
    pickled = sorted(p for p in root.glob(f"pytorch_model*{PICKLED_WEIGHTS_SUFFIX}") if p.is_file())
    skip = [p.name for p in pickled] + [p.name for p in root.glob("pytorch_model*.bin.index.json")]
    if not pickled or any(root.glob("*.safetensors")):
        return {}, skip
    extra = {}
    for path in pickled:
        target = path.name.replace("pytorch_model", "model", 1)[: -len(PICKLED_WEIGHTS_SUFFIX)] + ".safetensors"
        extra[target] = state_dict_to_safetensors(load_state_dict_safely(path, path.name))
    return extra, skip


def seal_model_folder(
    src: str | os.PathLike,
    out_path: str | os.PathLike,
    key: bytes,
    *,
    model_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Callable[[int, int], None] | None = None,
    onnx: bool = True,
    **metadata: Any,
) -> dict[str, Any]:
    """``seal_folder`` for a model folder whose weights may be pickled (converted in memory), with the
    encoder exported to ONNX for the CPU (``search.onnx_export``) unless ``onnx`` is False.

    ``metadata``: ``languages`` and ``relevance_floor``, as for
    ``keystore.bundle.seal_bundle``. Returns the public header, plus ``onnx``:
    a line saying whether the graph was sealed, and why not.
    """
    if not Path(src).is_dir():
        raise BundleError(f"{src} is not a folder")
    extra, skip = prepare_model_folder(src)
    extra, skip, onnx_note = with_onnx_graph(model_folder_files(src, extra_files=extra, skip=skip), extra, skip,
                                             enabled=onnx)
    header = seal_folder(
        src, out_path, key, chunk_size=chunk_size, model_id=model_id, progress=progress, extra_files=extra, skip=skip,
        **metadata,
    )
    return {**header, "onnx": onnx_note}


def reseal_legacy_cbc(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    key: bytes,
    *,
    legacy_key: bytes | None = None,
    config_dir: str | os.PathLike | None = None,
    model_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Callable[[int, int], None] | None = None,
    onnx: bool = True,
    **metadata: Any,
) -> dict[str, Any]:
    """Re-seal a legacy ``.q3e.enc`` (AES-256-CBC of a ``torch.save``d state dict) as a bundle.

    The legacy file holds only weights; ``config_dir`` adds the rest of the model
    folder (config, tokenizer, pooling files) so the result can be served. The
    legacy key defaults to ``key``. The encoder is exported to ONNX as by
    ``seal_model_folder`` (it needs ``config_dir``'s config.json), and the
    returned header says so under ``onnx``.
    """
    data = Path(in_path).read_bytes()
    plaintext = decrypt_legacy_cbc(data, legacy_key if legacy_key is not None else key)
    weights = state_dict_to_safetensors(load_state_dict_safely(plaintext, Path(in_path).name))
    skip: list[str] = []
    if config_dir is not None:
        _, skip = prepare_model_folder(config_dir)
        skip += [p.name for p in Path(config_dir).glob("*.safetensors")]  # the legacy weights replace them
    extra = {"model.safetensors": weights}
    extra, skip, onnx_note = with_onnx_graph(model_folder_files(config_dir, extra_files=extra, skip=skip), extra,
                                             skip, enabled=onnx)
    header = seal_folder(
        config_dir,
        out_path,
        key,
        chunk_size=chunk_size,
        model_id=model_id,
        progress=progress,
        extra_files=extra,
        skip=skip,
        **metadata,
    )
    return {**header, "onnx": onnx_note}
