"""The encoder run by ONNX Runtime on the CPU, from the ONNX graph sealed in the bundle.

On this kind of machine ONNX Runtime runs the same small encoder (all-MiniLM-L6-v2)
at about twice torch's speed for the short inputs of interactive searches
(issue 13). ``manage.py model_seal`` exports the encoder to ``onnx/model.onnx``
inside the bundle (``search.onnx_export``); here the graph becomes an
``onnxruntime.InferenceSession`` built from the decrypted bytes, never from a
path, so no plaintext model reaches the disk.

Only the encoder runs here: ``(input_ids, attention_mask) → last_hidden_state``.
Tokenisation, prompts, truncation, padding side, pooling and normalisation stay
in ``embedding`` and ``model``, the same code whichever backend runs, so the two
backends differ only in the forward pass.
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable, Mapping

import numpy as np
import torch

from search.engine.errors import EngineError

# ONNX Runtime 1.29 and later collect telemetry on Linux too, on by default: a
# device id and a queue of events (host, OS, errors) for upload under
# ~/.cache/Microsoft, and a session file in TMPDIR, from the first import on.
# A portal that serves a sealed model on premises sends and keeps nothing of
# the kind; the setting counts only if made before onnxruntime is first
# imported, so it is made when the engine is.
os.environ.update(ORT_DISABLE_TELEMETRY="1")

ONNX_FILE = "onnx/model.onnx"
BACKENDS = ("auto", "torch", "onnx")
# What the engine feeds: token ids and the padding mask; a graph exported by
# Hugging Face's tools for BERT-like models also takes segment ids, all zeros
# for one text, as the torch model assumes when it is not given them.
_REQUIRED_INPUTS = ("input_ids", "attention_mask")
_OPTIONAL_INPUTS = ("token_type_ids",)
_OUTPUT = "last_hidden_state"


def choose_backend(setting: str, device: torch.device, files: Mapping[str, memoryview]) -> str:
    """``EMBED_BACKEND`` for this bundle on this device: ``"onnx"`` or ``"torch"``.

    ``auto`` runs ONNX Runtime where it pays (the CPU) and where the bundle
    holds a graph, torch otherwise (a GPU, or a bundle sealed with --no-onnx or
    too large for ONNX's 2 GB limit). ``onnx`` that cannot be honoured is an
    error rather than a silent torch: the operator asked for it.
    """
    setting = (setting or "auto").strip().lower()
    if setting not in BACKENDS:
        raise EngineError(f"EMBED_BACKEND must be auto, torch or onnx, not {setting!r}")
    if setting == "torch":
        return "torch"
    if setting == "onnx":
        if device.type != "cpu":
            raise EngineError(f"EMBED_BACKEND is 'onnx' but the model runs on {device}: ONNX Runtime serves "
                              "the CPU only; set EMBED_DEVICE=cpu, or EMBED_BACKEND=auto to run torch on the GPU")
        if ONNX_FILE not in files:
            raise EngineError(f"EMBED_BACKEND is 'onnx' but the sealed bundle holds no ONNX graph ({ONNX_FILE}): "
                              "re-seal the model with `manage.py model_seal` (without --no-onnx), or set "
                              "EMBED_BACKEND=auto to run it on torch")
        return "onnx"
    return "onnx" if device.type == "cpu" and ONNX_FILE in files else "torch"


# Graph rewrites ONNX Runtime is told to skip. Its SkipLayerNormalization
# kernel (Add + LayerNormalization fused) made the encoder's forward pass on
# batches 6–8 % slower on this project's CPU than the two plain operators it
# replaces (about even for one short query); no other fusion changed the time
# (bench/onnx_graphs.py measures both).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
DISABLED_OPTIMIZERS_ENTRY = "optimization.disable_specified_optimizers"  # a session option, readable back


class OnnxEncoder:
    """An ONNX Runtime session over the sealed encoder graph. Build it with ``OnnxEncoder.open``."""

    def __init__(self, session, dimensions: int, run_options=None):
        self.session = session
        self.dimensions = dimensions
        self.threads = session.get_session_options().intra_op_num_threads
        self._run_options = run_options
        self._feeds_token_types = any(i.name == "token_type_ids" for i in session.get_inputs())

    @classmethod
    def open(cls, graph: memoryview, *, dimensions: int, threads: int | None = None,
             copied: Callable[[], None] | None = None,
             disabled_optimizers: tuple[str, ...] = DISABLED_OPTIMIZERS) -> "OnnxEncoder":
        """A session built from the graph's decrypted bytes; EngineError if it cannot serve the engine.

        ``copied`` is called as soon as the graph has been copied for ONNX
        Runtime, so the caller can drop its own plaintext of it before the
        session is built: building one holds several copies of the weights
        at once (about five times the graph for MiniLM, at its peak).

        ``threads`` (default: torch's thread count now, which gunicorn's
        ``post_worker_init`` sets from ``portal/sizing.py`` before the model
        opens) is ONNX Runtime's intra-op pool, so the sizing that keeps
        workers × threads within the cores holds for either backend. One
        inter-op thread and sequential execution: an encoder is a chain of
        layers, with nothing to run side by side. ``disabled_optimizers``: the
        graph rewrites ONNX Runtime skips (``DISABLED_OPTIMIZERS``).
        """
        try:
            import onnxruntime  # only where a CPU worker runs the graph
        except ImportError as exc:  # a GPU-only install may leave it out: auto then runs torch
            raise EngineError(f"ONNX Runtime is not installed ({exc})") from None

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its warnings are about its own graph rewrites
        if disabled_optimizers:
            options.add_session_config_entry(DISABLED_OPTIMIZERS_ENTRY, ",".join(disabled_optimizers))
        # The Python API takes ``bytes`` only, so this is one copy of the graph,
        # kept just long enough to build the session, then zeroed.
        model_bytes = bytes(graph)
        if copied is not None:
            copied()
        session = None
        try:
            session = onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / RuntimeError types
            raise EngineError(f"ONNX Runtime cannot load the sealed graph: {exc.__class__.__name__}: {exc}") from None
        finally:
            # The session keeps its argument to rebuild itself when its providers
            # change, which the engine never asks for: drop it, or the plaintext
            # graph would stay in memory beside the session's own weights.
            if session is not None and getattr(session, "_model_bytes", None) is model_bytes:
                session._model_bytes = None
            _zero_bytes(model_bytes)
            del model_bytes
        # ONNX Runtime's memory arena keeps the peak of every run: one import
        # batch of 64 texts of 256 tokens left a MiniLM worker at 1.7 GB
        # instead of 0.5 GB for good. Handing the unused arena back after each
        # run keeps the worker at 0.5 GB; without an arena, such a batch ran
        # twice as long (page faults on every layer's buffers), with it and the
        # shrinking about 8 % longer, and short queries as fast (issue 13's machine).
        run_options = onnxruntime.RunOptions()
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        encoder = cls(session, dimensions, run_options)
        encoder._check_signature()
        return encoder

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """``last_hidden_state`` (float32, batch × sequence × dimensions) of a padded int64 batch."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._feeds_token_types:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        (hidden,) = self.session.run([_OUTPUT], feeds, self._run_options)
        return hidden

    def _check_signature(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        unknown = sorted(set(inputs) - set(_REQUIRED_INPUTS) - set(_OPTIONAL_INPUTS))
        missing = [name for name in _REQUIRED_INPUTS if name not in inputs]
        if missing or unknown:
            raise EngineError(f"the sealed ONNX graph takes inputs {sorted(inputs)}, not the engine's "
                              f"{list(_REQUIRED_INPUTS)}: re-seal the model with `manage.py model_seal`")
        wrong_type = [name for name, i in inputs.items() if i.type != "tensor(int64)"]
        if wrong_type:
            raise EngineError(f"the sealed ONNX graph wants {wrong_type} as other than int64")
        output = outputs.get(_OUTPUT)
        if output is None or len(output.shape) != 3 or output.type != "tensor(float)":
            raise EngineError(f"the sealed ONNX graph has no float32 {_OUTPUT} output of three dimensions")
        width = output.shape[-1]
        if isinstance(width, int) and width != self.dimensions:
            raise EngineError(f"the sealed ONNX graph yields {width} dimensions; config.json says {self.dimensions}")


def _zero_bytes(data: bytes) -> None:
    """Zero a ``bytes`` object that this module made and alone holds.

    ``bytes`` are immutable to Python, but a plaintext copy left to the
    allocator would stay readable in the process until reused. Empty and
    one-byte objects are shared singletons in CPython and are never touched
    (a graph is never that small); other interpreters keep their copy.
    """
    if sys.implementation.name != "cpython" or len(data) < 2:
        return
    # CPython lays a bytes object out as its header followed by the data;
    # ``bytes.__basicsize__`` counts the header and the trailing NUL.
    ctypes.memset(id(data) + bytes.__basicsize__ - 1, 0, len(data))
