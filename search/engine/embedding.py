"""The engine: a model opened from a sealed bundle, turning texts into vectors.

Opening never writes plaintext anywhere and never unpickles: the bundle is
decrypted into one buffer (``keystore.bundle.open_bundle``), each safetensors
tensor becomes a view into that buffer (``files``), and the model is built on
the ``meta`` device and then given those views (``model``). On the CPU the
model computes straight from the decrypted buffer; on a GPU the weights are
copied over in half precision and the buffer is wiped. Concurrent ``embed``
calls share forward passes (``batching``).

On the CPU, a bundle that holds an ONNX graph of the encoder (sealed by
``manage.py model_seal``) runs it with ONNX Runtime instead (``onnx_backend``,
``EMBED_BACKEND``): the session is built from the decrypted bytes, the torch
model is never built, and the whole buffer is wiped once the session holds its
weights. Everything around the forward pass (tokenisation, prompts,
truncation, padding, pooling, normalisation, batching) is the same code for
both backends.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from keystore.bundle import OpenedBundle, open_bundle
from portal.metrics import MODEL_FORWARD_SECONDS
from search.engine.batching import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS, MicroBatcher
from search.engine.errors import EngineError
from search.engine.files import plaintext_folder_files, weights
from search.engine.model import (
    TextSettings,
    build_model,
    build_tokenizer,
    load_config,
    move_parameters,
    pool,
    read_settings,
    resolve_device,
)
from search.engine.onnx_backend import ONNX_FILE, OnnxEncoder, choose_backend

KINDS = ("query", "document")
logger = logging.getLogger("search.engine")


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # float32, shape (len(texts), dimensions), each row of L2 norm 1
    truncated: list[bool]  # the text was longer than the model's limit and was cut
    token_counts: list[int]  # tokens the model read per text, prompt and special tokens included


class PendingEmbedding:
    """Texts queued for the model (``Engine.embed_start``); ``result()`` waits for them."""

    def __init__(self, queued, ids: list[list[int]], truncated: list[bool], dimensions: int | None):
        self._queued, self._ids, self._truncated, self._dimensions = queued, ids, truncated, dimensions

    def result(self) -> EmbedResult:
        vectors = self._queued.wait()
        if self._dimensions is not None:
            vectors = vectors[:, :self._dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return EmbedResult(
            vectors=np.ascontiguousarray(vectors, dtype=np.float32),
            truncated=self._truncated,
            token_counts=[len(seq) for seq in self._ids],
        )


class Engine:
    """A model opened from a sealed bundle. Use ``Engine.open``; thread-safe ``embed``.

    The encoder is either a torch ``model`` or an ONNX Runtime session
    (``onnx``); ``backend`` says which (``"torch"`` or ``"onnx"``).
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module | None,
        tokenizer: PreTrainedTokenizerFast,
        settings: TextSettings,
        device: torch.device,
        model_id: str,
        key_id: str,
        bundle: OpenedBundle | None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        languages: Sequence[str] = (),
        relevance_floor: float | None = None,
        onnx: OnnxEncoder | None = None,
    ):
        if (model is None) == (onnx is None):
            raise ValueError("an engine runs either a torch model or an ONNX session")
        self.model = model  # None when ONNX Runtime runs the encoder
        self.onnx = onnx
        self.backend = "torch" if onnx is None else "onnx"
        self.tokenizer = tokenizer
        self.settings = settings
        self.device = str(device)
        self.model_id = model_id
        self.key_id = key_id
        self.languages = tuple(languages)  # ISO 639-1 codes from the sealed metadata; empty: not stated
        self.relevance_floor = relevance_floor  # calibrated weak-match cosine from the sealed metadata
        self.dtype = torch.float32 if model is None else next(model.parameters()).dtype
        self.dimensions = onnx.dimensions if model is None else int(model.config.hidden_size)
        self.max_tokens = settings.max_seq_length
        self._torch_device = device
        # Padding positions are masked out, so any valid id will do when there is no pad token.
        self._pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
        self._bundle = bundle  # torch on the CPU: the weights are views into its buffer, keep it alive
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        # The fast tokenizer re-applies truncation settings to its Rust backend on
        # every call; concurrent calls can collide on that ("Already borrowed").
        self._tokenizer_lock = threading.Lock()
        self._batcher = MicroBatcher(self._run_batch, self.dimensions, max_batch_tokens, max_batch_size)

    @classmethod
    def open(cls, path: str | os.PathLike, key: bytes, device: str = "auto", backend: str = "auto",
             **options: int) -> "Engine":
        """Open a sealed bundle; on any failure the plaintext is wiped and the error raised.

        ``backend`` is ``EMBED_BACKEND``: ``auto`` runs ONNX Runtime on the CPU
        when the bundle holds a graph (torch if that graph cannot serve, with a
        warning), ``torch`` or ``onnx`` insist on one (``search.engine.onnx_backend``).
        """
        torch_device = resolve_device(device)
        backend = (backend or "auto").strip().lower()
        bundle = open_bundle(path, key)
        try:
            config = load_config(bundle.files)
            settings = read_settings(bundle.files, config)
            tokenizer = build_tokenizer(bundle.files, settings)
            model_id = bundle.model_id or config.name_or_path or "unnamed-model"
            key_id = bundle.header["key_id"]
            metadata = {"languages": bundle.languages, "relevance_floor": bundle.relevance_floor}
            onnx = model = None
            if choose_backend(backend, torch_device, bundle.files) == "onnx":
                try:
                    onnx = OnnxEncoder.open(bundle.files[ONNX_FILE], dimensions=int(config.hidden_size),
                                            copied=lambda: bundle.discard(ONNX_FILE))
                except EngineError as exc:
                    if backend == "onnx":
                        raise
                    logger.warning("the sealed ONNX graph of %s cannot serve, running torch instead: %s",
                                   model_id, exc)
            if onnx is not None:
                # The session holds its own copy of the weights: no plaintext
                # of the bundle is needed any more, and no torch model is built.
                bundle.wipe()
                bundle = None
            else:
                bundle.discard(ONNX_FILE)  # torch runs: the graph's pages go back to the kernel
                model = build_model(config, weights(bundle.files))
            if model is not None and torch_device.type == "cuda":
                half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                move_parameters(model, torch_device, half)
                bundle.wipe()  # the weights now live on the GPU; nothing points into the buffer
                bundle = None
            return cls(
                model=model,
                onnx=onnx,
                tokenizer=tokenizer,
                settings=settings,
                device=torch_device,
                model_id=model_id,
                key_id=key_id,
                bundle=bundle,
                **metadata,
                **options,
            )
        except BaseException as exc:
            if bundle is not None:
                bundle.wipe()
            if isinstance(exc, (EngineError, KeyboardInterrupt, SystemExit, MemoryError)):
                raise
            raise EngineError(f"the sealed model could not be built: {exc.__class__.__name__}: {exc}") from exc

    @classmethod
    def open_folder(cls, folder: str | os.PathLike, *, model_id: str, device: str = "cpu",
                    languages: Sequence[str] = (), relevance_floor: float | None = None) -> "Engine":
        """A plaintext model folder, built exactly like a bundle. For benchmarks
        and parity checks only: the portal itself opens sealed bundles alone."""
        files = plaintext_folder_files(folder)
        config = load_config(files)
        settings = read_settings(files, config)
        engine = cls(model=build_model(config, weights(files)), tokenizer=build_tokenizer(files, settings),
                     settings=settings, device=resolve_device(device), model_id=model_id, key_id="plaintext",
                     bundle=None, languages=languages, relevance_floor=relevance_floor)
        engine._plaintext_files = files  # the weights are views into these bytes
        return engine

    def embed(
        self, texts: Sequence[str], *, kind: str = "query", dimensions: int | None = None
    ) -> EmbedResult:
        """L2-normalised float32 vectors; ``dimensions`` truncates (Matryoshka) and re-normalises."""
        return self.embed_start(texts, kind=kind, dimensions=dimensions).result()

    def embed_start(
        self, texts: Sequence[str], *, kind: str = "query", dimensions: int | None = None
    ) -> "PendingEmbedding":
        """``embed``, queued: returns at once, and ``.result()`` waits for the
        vectors. A search writes its submitted audit record meanwhile."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 0 < dimensions <= self.dimensions
        ):
            raise ValueError(f"dimensions must be an integer from 1 to {self.dimensions}, not {dimensions!r}")
        ids, truncated = self._tokenize(list(texts), kind)
        return PendingEmbedding(self._batcher.start(ids), ids, truncated,
                                None if dimensions is None or dimensions >= self.dimensions else dimensions)

    def close(self) -> None:
        """Stop the batch worker and wipe the decrypted bundle (the model is unusable afterwards).

        An ONNX session's weights are its own memory: they are freed with the
        session, not zeroed (as torch's weights on a GPU are).
        """
        self._batcher.close()
        self.model = None
        self.onnx = None
        if self._bundle is not None:
            self._bundle.wipe()
            self._bundle = None

    def _tokenize(self, texts: list[str], kind: str) -> tuple[list[list[int]], list[bool]]:
        if not texts:
            return [], []
        prompt = self.settings.prompts[kind]
        with self._tokenizer_lock:
            encoded = self.tokenizer(
                [prompt + text for text in texts],
                truncation=True,
                max_length=self.max_tokens,
                return_overflowing_tokens=True,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
        # Overflow windows repeat the sample index: a text that has them was cut.
        ids: list[list[int] | None] = [None] * len(texts)
        truncated = [False] * len(texts)
        for seq, sample in zip(encoded["input_ids"], encoded["overflow_to_sample_mapping"]):
            if ids[sample] is None:
                ids[sample] = seq
            else:
                truncated[sample] = True
        return ids, truncated

    def _run_batch(self, batch: list[list[int]]) -> np.ndarray:
        width = max(len(seq) for seq in batch)
        input_ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, seq in enumerate(batch):
            span = slice(width - len(seq), width) if self.settings.padding_side == "left" else slice(0, len(seq))
            input_ids[row, span] = seq
            mask[row, span] = 1
        if self.onnx is not None:
            return self._run_onnx(input_ids, mask)
        stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        started = time.perf_counter()
        with torch.inference_mode(), stream:
            input_tensor = torch.from_numpy(input_ids).to(self._torch_device, non_blocking=True)
            mask_tensor = torch.from_numpy(mask).to(self._torch_device, non_blocking=True)
            hidden = self.model(input_ids=input_tensor, attention_mask=mask_tensor).last_hidden_state
            pooled = pool(hidden, mask_tensor, self.settings.pooling).float()
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            vectors = pooled.cpu().numpy()  # waits for the device: the time is the forward pass's
        MODEL_FORWARD_SECONDS.observe(time.perf_counter() - started)
        return vectors

    def _run_onnx(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The ONNX Runtime forward pass, then the very pooling and normalisation of the torch path."""
        started = time.perf_counter()
        hidden = self.onnx(input_ids, mask)
        with torch.inference_mode():
            pooled = pool(torch.from_numpy(hidden), torch.from_numpy(mask), self.settings.pooling).float()
            vectors = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        MODEL_FORWARD_SECONDS.observe(time.perf_counter() - started)
        return vectors
