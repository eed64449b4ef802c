"""The encoder as an ONNX graph, exported in memory when a model folder is sealed.

ONNX Runtime runs a small encoder on short inputs (a search's query) about
twice as fast as torch on a CPU (``search.engine.onnx_backend``, issue 13).
The graph is exported once, by whoever seals the model, rather than by every
worker at startup: torch's exporter takes tens of seconds and several copies
of the weights. It is sealed in the same bundle as ``onnx/model.onnx``,
encrypted and authenticated like every other file, so it can never drift
from the weights beside it.

Nothing is written to disk, not even a temporary file: the model is built from
the files about to be sealed, read into memory, exactly as the engine builds it
(``search.engine.model``); torch's ``torch.export``-based exporter is called
without a file and hands back the program, which is serialised to bytes; and
before the graph is kept, ONNX Runtime runs it from those bytes on inputs of
other shapes than it was traced with, against torch. (Importing the exporter
makes torch create its inductor cache folder in TMPDIR; nothing is written
into it.)

A model whose float32 weights do not fit ONNX's 2 GB protobuf limit
(Qwen3-Embedding-0.6B and larger) is sealed without a graph and runs on torch,
as it does on a GPU; so is one whose architecture does not export.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from search.engine.files import weights
from search.engine.model import build_model, load_config
from search.engine.onnx_backend import ONNX_FILE, OnnxEncoder

# A protobuf message, the whole graph included, cannot exceed 2 GiB; leave the
# graph itself room.
ONNX_WEIGHTS_LIMIT = 2**31 - 2**26
# Each token's hidden state from ONNX Runtime against torch's: float32 kernels
# that add in another order agree to about 1e-7; a graph that specialised on the
# traced shapes or dropped the mask does not come close.
TOKEN_COSINE_FLOOR = 0.9999
# The opsets tried, newest first; the first whose graph ONNX Runtime runs like
# torch is sealed. Opset 23 has a fused Attention operator that the exporter
# emits for torch's scaled_dot_product_attention and ONNX Runtime (1.23 on)
# runs as one kernel: on 32 texts of ~140 tokens MiniLM ran 10 % faster than
# as opset 18's matrix products and softmax. Its RotaryEmbedding operator, which
# Qwen3's graph gets, fails in ONNX Runtime 1.32 on shapes other than the traced
# ones (the check below catches it), so such models are sealed at opset 18.
ONNX_OPSETS = (23, 18)
_TRACE_SHAPE = (2, 8)  # batch, sequence of the example the exporter traces
_SAFETENSORS_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
# They log each graph rewrite at INFO, hundreds of lines for one model.
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "onnx_ir", "onnxscript")


@dataclass(frozen=True)
class OnnxExport:
    """The graph to seal (None when there is none) and what happened, as ``model_seal`` says it."""

    graph: bytes | None
    note: str


def export_onnx(files: Mapping[str, Path | bytes]) -> OnnxExport:
    """The encoder of the model made of ``files`` (name in the bundle → file or bytes) as ONNX bytes.

    Never raises for a model that will not export: the bundle is then sealed
    without a graph, and the note says why.
    """
    if "config.json" not in files:
        return OnnxExport(None, "not included: there is no config.json to build the model from")
    try:
        size = float32_weights_size(files)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return OnnxExport(None, f"not included: a safetensors header is unreadable ({exc.__class__.__name__}); "
                                "the model runs on torch")
    if size == 0:
        return OnnxExport(None, "not included: there are no safetensors weights to export")
    if size > ONNX_WEIGHTS_LIMIT:
        return OnnxExport(None, f"not included: {size / 2**30:.1f} GiB of float32 weights exceed ONNX's 2 GB "
                                "limit; the model runs on torch")
    try:
        graph, opset = _export(files)
    except Exception as exc:  # any architecture the exporter or ONNX Runtime cannot take
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        return OnnxExport(None, f"not included: the export failed ({exc.__class__.__name__}: {reason}); "
                                "the model runs on torch")
    return OnnxExport(graph, f"included ({len(graph) / 2**20:.1f} MiB, opset {opset}): CPU workers run it "
                             "with ONNX Runtime")


def float32_weights_size(files: Mapping[str, Path | bytes]) -> int:
    """Bytes the top-level safetensors weights take in float32, read from their headers alone.

    Known before anything is loaded, so a model too large for ONNX costs no
    more than reading a few kilobytes.
    """
    total = 0
    for name, source in files.items():
        if "/" in name or not name.endswith(".safetensors"):
            continue
        if isinstance(source, Path):
            with source.open("rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(length))
        else:
            length = int.from_bytes(source[:8], "little")
            header = json.loads(bytes(source[8 : 8 + length]))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            count = math.prod(int(n) for n in info["shape"])
            start, end = (int(n) for n in info["data_offsets"])
            total += 4 * count if info["dtype"] in _SAFETENSORS_FLOATS else end - start
    return total


class _Encoder(torch.nn.Module):
    """The engine's forward pass (``Engine._run_batch``): token ids and padding mask in, last hidden state out."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _export(files: Mapping[str, Path | bytes]) -> tuple[bytes, int]:
    """The checked graph and its opset; the error of the last opset tried when none passes."""
    needed = [n for n in files if n == "config.json" or ("/" not in n and n.endswith(".safetensors"))]
    in_memory = {n: memoryview(files[n].read_bytes() if isinstance(files[n], Path) else files[n]) for n in needed}
    config = load_config(in_memory)
    with _quiet():
        model = build_model(config, weights(in_memory))
        if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
            model = model.float()  # ONNX Runtime's CPU kernels are float32 ones
        encoder = _Encoder(model).eval()
        failure: Exception | None = None
        for opset in ONNX_OPSETS:
            try:
                graph = _export_graph(encoder, config, opset)
                _check_against_torch(graph, encoder, config)
                return graph, opset
            except Exception as exc:  # the next opset may do; the last one's error is the one told
                failure = exc
        raise failure


def _export_graph(encoder: _Encoder, config, opset: int) -> bytes:
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    program = torch.onnx.export(
        encoder,
        _sample(config, *_TRACE_SHAPE),
        dynamo=True,  # torch.export: the exporter torch maintains; no file when none is given
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
        opset_version=opset,
        verbose=False,
    )
    return program.model_proto.SerializeToString()


def _sample(config, batch: int, sequence: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a mask with a full row, a right-padded row and a left-padded row (as many as fit)."""
    vocabulary = int(getattr(config, "vocab_size", 0) or 1000)
    ids = (torch.arange(batch * sequence, dtype=torch.int64).reshape(batch, sequence) * 7 + 3) % vocabulary
    mask = torch.ones(batch, sequence, dtype=torch.int64)
    if batch > 1:
        mask[1, sequence // 2 :] = 0
    if batch > 2:
        mask[2, : sequence - sequence // 3] = 0
    return ids, mask


def _check_against_torch(graph: bytes, encoder: _Encoder, config) -> None:
    """ONNX Runtime, built from the bytes as the engine builds it, against torch on untraced shapes."""
    session = OnnxEncoder.open(memoryview(graph), dimensions=int(config.hidden_size))
    for shape in ((3, 13), (1, 5)):
        ids, mask = _sample(config, *shape)
        with torch.inference_mode():
            expected = encoder(ids, mask).float().numpy()
        got = session(ids.numpy(), mask.numpy())
        valid = mask.numpy().astype(bool)
        a, b = expected[valid], got[valid]
        cosine = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
        if not np.isfinite(got[valid]).all() or cosine.min() < TOKEN_COSINE_FLOOR:
            raise ValueError(f"ONNX Runtime's hidden states differ from torch's on a {shape[0]}×{shape[1]} batch "
                             f"(lowest token cosine {float(np.nan_to_num(cosine.min())):.6f})")


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines, deprecation warnings and logging are not the operator's concern:
    ``model_seal`` prints one line saying whether the graph was included, and why not."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def with_onnx_graph(
    files: Mapping[str, Path | bytes], extra_files: Mapping[str, bytes], skip: list[str], *, enabled: bool
) -> tuple[dict[str, bytes], list[str], str]:
    """``extra_files`` and ``skip`` for ``search.sealing.seal_folder``, with the exported graph added
    (``enabled``, and it exports) or ``onnx/model.onnx`` left out; and the note saying which.

    ``onnx/model.onnx`` in a bundle is always this module's export: a graph
    shipped in the model folder (Hugging Face repositories often have one,
    with other inputs and outputs) is replaced or left out, so a bundle sealed
    without a graph runs on torch, as asked.
    """
    if not enabled:
        return dict(extra_files), [*skip, ONNX_FILE], "not included (--no-onnx): the model runs on torch"
    export = export_onnx(files)
    if export.graph is None:
        return dict(extra_files), [*skip, ONNX_FILE], export.note
    return {**extra_files, ONNX_FILE: export.graph}, list(skip), export.note
