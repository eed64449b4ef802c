"""The embedding engine: a sealed model bundle turned into vectors, once per worker.

Opening never writes plaintext anywhere and never unpickles: the bundle is
decrypted into one buffer (``keystore.bundle.open_bundle``), each safetensors
tensor becomes a ``torch.frombuffer`` view into that buffer, and the model is
built with its parameters on the ``meta`` device and then given those views
with ``load_state_dict(assign=True)``. On the CPU the model computes straight
from the decrypted buffer; on a GPU the weights are copied over in half
precision and the buffer is wiped.

Pooling, normalisation, sequence length and prompts come from the bundle's
sentence-transformers files, so the vectors equal ``SentenceTransformer`` on the
same plaintext folder. Concurrent callers in one process share forward passes:
one worker thread takes every queued text, sorts by length and runs batches
under a token budget.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer
from tokenizers.normalizers import Lowercase
from tokenizers.normalizers import Sequence as NormalizerSequence
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast
from transformers.initialization import no_init_weights

from keystore.bundle import OpenedBundle, open_bundle
from portal.metrics import MODEL_FORWARD_SECONDS, MODEL_INFO

logger = logging.getLogger(__name__)

QWEN3_DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"
KINDS = ("query", "document")
DEFAULT_MAX_BATCH_TOKENS = 16384
DEFAULT_MAX_BATCH_SIZE = 64

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
_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_lasttoken": "lasttoken",
}
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_SUPPORTED_MODULES = {"Transformer": "transformer", "Pooling": "pooling", "Normalize": "normalize"}


class EngineError(Exception):
    """The sealed model cannot be turned into an engine; the message says why."""


class EngineUnavailable(EngineError):
    """No engine is open in this process (not opened yet, or opening failed)."""


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # float32, shape (len(texts), dimensions), each row of L2 norm 1
    truncated: list[bool]  # the text was longer than the model's limit and was cut
    token_counts: list[int]  # tokens the model read per text, prompt and special tokens included


@dataclass(frozen=True)
class TextSettings:
    """How text becomes a vector, read from the bundle's sentence-transformers files."""

    pooling: str
    max_seq_length: int
    do_lower_case: bool
    prompts: Mapping[str, str]
    padding_side: str


# --- reading the bundle ------------------------------------------------------------


def _json_file(files: Mapping[str, memoryview], name: str) -> Any:
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


def _weights(files: Mapping[str, memoryview]) -> dict[str, torch.Tensor]:
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


def _read_settings(files: Mapping[str, memoryview], config: Any) -> TextSettings:
    modules = _json_file(files, "modules.json") or [
        {"type": "sentence_transformers.models.Transformer", "path": ""},
        {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"},
    ]
    kinds = {}
    for module in modules:
        short = str(module.get("type", "")).rsplit(".", 1)[-1]
        if short not in _SUPPORTED_MODULES:
            raise EngineError(f"sentence-transformers module {module.get('type')} is not supported by the engine")
        kinds[_SUPPORTED_MODULES[short]] = module.get("path", "")

    pooling_path = kinds.get("pooling")
    pooling_config = _json_file(files, f"{pooling_path}/config.json") if pooling_path else None
    pooling = _pooling_mode(pooling_config or {}, config)

    transformer_config = _json_file(files, "sentence_bert_config.json") or {}
    tokenizer_config = _json_file(files, "tokenizer_config.json") or {}
    max_seq_length = transformer_config.get("max_seq_length")
    if max_seq_length is None:
        candidates = [tokenizer_config.get("model_max_length"), getattr(config, "max_position_embeddings", None)]
        limits = [int(c) for c in candidates if isinstance(c, (int, float)) and 0 < c < 10**7]
        max_seq_length = min(limits) if limits else 512

    st_config = _json_file(files, "config_sentence_transformers.json") or {}
    prompts = dict(st_config.get("prompts") or {})
    if config.model_type == "qwen3":
        prompts.setdefault("query", f"Instruct: {QWEN3_DEFAULT_TASK}\nQuery:")
    prompts = {"query": prompts.get("query", ""), "document": prompts.get("document", "")}

    # Last-token pooling reads position -1, so the real tokens must end there.
    padding_side = "left" if pooling == "lasttoken" else tokenizer_config.get("padding_side", "right")
    return TextSettings(
        pooling=pooling,
        max_seq_length=int(max_seq_length),
        do_lower_case=bool(transformer_config.get("do_lower_case", False)),
        prompts=prompts,
        padding_side=padding_side,
    )


def _pooling_mode(pooling_config: Mapping[str, Any], config: Any) -> str:
    if pooling_config.get("include_prompt") is False:
        raise EngineError("pooling that excludes the prompt (include_prompt: false) is not supported")
    mode = pooling_config.get("pooling_mode")
    if mode is None:
        modes = [name for key, name in _POOLING_KEYS.items() if pooling_config.get(key)]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    if not modes:
        modes = ["lasttoken" if config.model_type == "qwen3" else "mean"]
    if len(modes) != 1 or modes[0] not in _POOLING_KEYS.values():
        raise EngineError(f"pooling mode {modes} is not supported (one of {sorted(_POOLING_KEYS.values())})")
    return modes[0]


def _tokenizer(files: Mapping[str, memoryview], settings: TextSettings) -> PreTrainedTokenizerFast:
    if "tokenizer.json" not in files:
        raise EngineError("the bundle holds no tokenizer.json (the engine needs a fast tokenizer)")
    backend = Tokenizer.from_str(bytes(files["tokenizer.json"]).decode("utf-8"))
    if settings.do_lower_case:
        backend.normalizer = NormalizerSequence(
            [Lowercase()] + ([backend.normalizer] if backend.normalizer is not None else [])
        )
    options: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        options.update(_json_file(files, name) or {})
    special = {}
    for token in _SPECIAL_TOKENS:
        value = options.get(token)
        if isinstance(value, dict):  # serialized AddedToken
            value = value.get("content")
        if isinstance(value, str):
            special[token] = value
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=settings.max_seq_length,
        padding_side=settings.padding_side,
        **special,
    )
    return tokenizer


# --- building the model ------------------------------------------------------------

_construction_lock = threading.Lock()


@contextlib.contextmanager
def _parameters_on_meta():
    """Create parameters on the meta device but buffers for real.

    Parameters come from the bundle, so allocating and initialising them would be
    wasted time and memory. Non-persistent buffers (BERT ``position_ids``, rotary
    ``inv_freq``) are not in the weights file: they must be computed exactly as a
    normal construction does, or the model silently produces NaN. Building
    entirely under ``torch.device("meta")`` would leave them empty.
    """
    register = torch.nn.Module.register_parameter

    def register_on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    with _construction_lock:  # the patch is process-wide; opening is rare and serialised
        torch.nn.Module.register_parameter = register_on_meta
        try:
            yield
        finally:
            torch.nn.Module.register_parameter = register


def _load_config(files: Mapping[str, memoryview]) -> Any:
    config_dict = _json_file(files, "config.json")
    if not isinstance(config_dict, dict) or "model_type" not in config_dict:
        raise EngineError("the bundle holds no config.json with a model_type")
    if config_dict.get("auto_map"):
        raise EngineError("models that need custom code (auto_map in config.json) are not supported")
    model_type = config_dict.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **config_dict)
    except ValueError as exc:
        raise EngineError(f"model type {model_type!r} is not supported by this transformers ({exc})") from None


def _build_model(config: Any, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    # Random initialisation of meta parameters computes nothing but still costs a
    # pass through torch's reference kernels per tensor; every parameter is replaced.
    with _parameters_on_meta(), no_init_weights():
        model = AutoModel.from_config(config)
    expected = set(model.state_dict().keys())
    prefixes = [p for p in (getattr(model, "base_model_prefix", ""), "model") if p]
    matched: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        # Checkpoints saved from a task head carry its prefix ("bert.", "model."),
        # a bare encoder does not; AutoModel builds the bare encoder.
        candidates = [name] + [name[len(p) + 1 :] for p in prefixes if name.startswith(p + ".")]
        target = next((c for c in candidates if c in expected), None)
        if target is not None:
            matched[target] = tensor
    missing = sorted(expected - matched.keys())
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise EngineError(f"the sealed weights lack {len(missing)} tensors the model needs: {shown}")
    model.load_state_dict(matched, strict=False, assign=True)
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise EngineError(f"the model has tensors with no values after loading: {', '.join(still_meta[:5])}")
    model.requires_grad_(False)
    return model.eval()


def _move_parameters(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Parameters to ``device`` in ``dtype`` one tensor at a time; buffers keep their dtype.

    ``model.to(dtype=...)`` would also round buffers such as rotary ``inv_freq``
    (which transformers keeps in float32), and moving first then casting would
    hold a full-precision copy on the GPU.
    """
    moved: dict[int, torch.nn.Parameter] = {}  # tied parameters stay tied
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is None:
                continue
            if id(param) not in moved:
                target = dtype if param.is_floating_point() else param.dtype
                moved[id(param)] = torch.nn.Parameter(param.to(device, target), requires_grad=False)
            module._parameters[name] = moved[id(param)]
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = buffer.to(device)


def resolve_device(name: str) -> torch.device:
    """``EMBED_DEVICE``: ``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise EngineError(f"EMBED_DEVICE is {name!r} but no CUDA device is available")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EngineError(f"EMBED_DEVICE is {name!r} but there are {torch.cuda.device_count()} CUDA devices")
        return device
    raise EngineError(f"EMBED_DEVICE must be auto, cpu, cuda or cuda:N, not {name!r}")


# --- batching ------------------------------------------------------------------------


@dataclass
class _Request:
    ids: list[list[int]]
    vectors: np.ndarray
    remaining: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class _MicroBatcher:
    """One worker thread runs the model; callers queue tokenized texts and wait.

    Texts from every waiting caller are pooled, sorted by length (short first, so
    interactive queries are not stuck behind a bulk import) and cut into batches
    of at most ``max_tokens`` padded tokens and ``max_size`` texts. A caller that
    arrives while a batch runs joins the next one.
    """

    def __init__(self, run_batch, dimensions: int, max_tokens: int, max_size: int):
        self._run_batch = run_batch
        self._dimensions = dimensions
        self._max_tokens = max_tokens
        self._max_size = max_size
        self._pending: list[tuple[int, _Request, int]] = []  # (length, request, row)
        self._wakeup = threading.Condition()
        self._worker: threading.Thread | None = None
        self._worker_pid: int | None = None
        self._closed = False

    def submit(self, ids: list[list[int]]) -> np.ndarray:
        request = _Request(ids, np.empty((len(ids), self._dimensions), np.float32), len(ids))
        if not ids:
            return request.vectors
        with self._wakeup:
            if self._closed:
                raise EngineUnavailable("the embedding engine was closed")
            self._ensure_worker()
            self._pending.extend((len(seq), request, row) for row, seq in enumerate(ids))
            self._wakeup.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.vectors

    def close(self) -> None:
        with self._wakeup:
            self._closed = True
            self._wakeup.notify_all()
        if self._worker is not None and self._worker_pid == os.getpid():
            self._worker.join(timeout=30)

    def _ensure_worker(self) -> None:
        # A forked child inherits the object but not the thread: start its own.
        if self._worker is None or self._worker_pid != os.getpid() or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="embed-batcher", daemon=True)
            self._worker_pid = os.getpid()
            self._worker.start()

    def _next_batch(self) -> list[tuple[int, _Request, int]] | None:
        with self._wakeup:
            while not self._pending and not self._closed:
                self._wakeup.wait()
            if not self._pending:
                return None
            self._pending.sort(key=lambda item: item[0])
            size = 1
            while (
                size < len(self._pending)
                and size < self._max_size
                and (size + 1) * max(self._pending[size][0], 1) <= self._max_tokens
            ):
                size += 1
            batch, self._pending = self._pending[:size], self._pending[size:]
            return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                vectors = self._run_batch([item[1].ids[item[2]] for item in batch])
            except BaseException as exc:  # handed to every waiting caller, never lost in this thread
                error: BaseException | None = exc
            else:
                error = None
            for index, (_, request, row) in enumerate(batch):
                if error is None:
                    request.vectors[row] = vectors[index]
                elif request.error is None:
                    request.error = error
                request.remaining -= 1
                if request.remaining == 0:
                    request.done.set()


# --- the engine ----------------------------------------------------------------------


class Engine:
    """A model opened from a sealed bundle. Use ``Engine.open``; thread-safe ``embed``."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
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
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.device = str(device)
        self.model_id = model_id
        self.key_id = key_id
        self.languages = tuple(languages)  # ISO 639-1 codes from the sealed metadata; empty: not stated
        self.relevance_floor = relevance_floor  # calibrated weak-match cosine from the sealed metadata
        self.dtype = next(model.parameters()).dtype
        self.dimensions = int(model.config.hidden_size)
        self.max_tokens = settings.max_seq_length
        self._torch_device = device
        # Padding positions are masked out, so any valid id will do when there is no pad token.
        self._pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
        self._bundle = bundle  # on the CPU the weights are views into its buffer: keep it alive
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        # The fast tokenizer re-applies truncation settings to its Rust backend on
        # every call; concurrent calls can collide on that ("Already borrowed").
        self._tokenizer_lock = threading.Lock()
        self._batcher = _MicroBatcher(self._run_batch, self.dimensions, max_batch_tokens, max_batch_size)

    @classmethod
    def open(cls, path: str | os.PathLike, key: bytes, device: str = "auto", **options: int) -> "Engine":
        """Open a sealed bundle; on any failure the plaintext is wiped and the error raised."""
        torch_device = resolve_device(device)
        bundle = open_bundle(path, key)
        try:
            config = _load_config(bundle.files)
            settings = _read_settings(bundle.files, config)
            tokenizer = _tokenizer(bundle.files, settings)
            model = _build_model(config, _weights(bundle.files))
            model_id = bundle.model_id or config.name_or_path or "unnamed-model"
            key_id = bundle.header["key_id"]
            metadata = {"languages": bundle.languages, "relevance_floor": bundle.relevance_floor}
            if torch_device.type == "cuda":
                half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                _move_parameters(model, torch_device, half)
                bundle.wipe()  # the weights now live on the GPU; nothing points into the buffer
                bundle = None
            return cls(
                model=model,
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
        root = Path(folder)
        files = {
            str(path.relative_to(root)): memoryview(path.read_bytes())
            for path in sorted(root.rglob("*"))
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
        }
        config = _load_config(files)
        settings = _read_settings(files, config)
        engine = cls(model=_build_model(config, _weights(files)), tokenizer=_tokenizer(files, settings),
                     settings=settings, device=resolve_device(device), model_id=model_id, key_id="plaintext",
                     bundle=None, languages=languages, relevance_floor=relevance_floor)
        engine._plaintext_files = files  # the weights are views into these bytes
        return engine

    def embed(
        self, texts: Sequence[str], *, kind: str = "query", dimensions: int | None = None
    ) -> EmbedResult:
        """L2-normalised float32 vectors; ``dimensions`` truncates (Matryoshka) and re-normalises."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 0 < dimensions <= self.dimensions
        ):
            raise ValueError(f"dimensions must be an integer from 1 to {self.dimensions}, not {dimensions!r}")
        ids, truncated = self._tokenize(list(texts), kind)
        vectors = self._batcher.submit(ids)
        if dimensions is not None and dimensions < self.dimensions:
            vectors = vectors[:, :dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return EmbedResult(
            vectors=np.ascontiguousarray(vectors, dtype=np.float32),
            truncated=truncated,
            token_counts=[len(seq) for seq in ids],
        )

    def close(self) -> None:
        """Stop the batch worker and wipe the decrypted bundle (the model is unusable afterwards)."""
        self._batcher.close()
        self.model = None
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
        stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        started = time.perf_counter()
        with torch.inference_mode(), stream:
            input_tensor = torch.from_numpy(input_ids).to(self._torch_device, non_blocking=True)
            mask_tensor = torch.from_numpy(mask).to(self._torch_device, non_blocking=True)
            hidden = self.model(input_ids=input_tensor, attention_mask=mask_tensor).last_hidden_state
            pooled = _pool(hidden, mask_tensor, self.settings.pooling).float()
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            vectors = pooled.cpu().numpy()  # waits for the device: the time is the forward pass's
        MODEL_FORWARD_SECONDS.observe(time.perf_counter() - started)
        return vectors


def _pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        # The last position whose mask is 1, whichever side the padding is on.
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    total = (hidden * weights).sum(dim=1, dtype=torch.float32)
    count = weights.sum(dim=1, dtype=torch.float32).clamp(min=1e-9)
    return total / (count if mode == "mean" else count.sqrt())


# --- the process's engine -----------------------------------------------------------------

_engine: Engine | None = None
_engine_problem = "the embedding model has not been opened in this process"
_engine_lock = threading.Lock()


def get_engine() -> Engine:
    """The engine this process serves with; ``EngineUnavailable`` if none is open."""
    engine = _engine
    if engine is None:
        raise EngineUnavailable(_engine_problem)
    return engine


def set_engine(engine: Engine | None) -> Engine | None:
    """Install ``engine`` (or none) as the process's engine; returns the previous one, not closed."""
    global _engine, _engine_problem
    with _engine_lock:
        previous, _engine = _engine, engine
        if engine is None:
            _engine_problem = "the embedding model has not been opened in this process"
        _served_model_metric(previous, engine)
    return previous


def _served_model_metric(previous: Engine | None, engine: Engine | None) -> None:
    """portal_model_info{model_id, device} is 1 for the model this process serves."""
    if previous is not None and previous is not engine:
        MODEL_INFO.labels(previous.model_id, str(previous.device)).set(0)
    if engine is not None:
        MODEL_INFO.labels(engine.model_id, str(engine.device)).set(1)


def open_engine(path: str | os.PathLike, key: bytes | None, device: str = "auto") -> Engine:
    """Open the sealed model for this process (gunicorn calls this after fork); fail closed."""
    global _engine, _engine_problem
    with _engine_lock:
        previous, _engine = _engine, None
        if previous is not None:
            previous.close()
        try:
            if key is None:
                raise EngineError("no model key: set EMBED_MODEL_KEY or EMBED_MODEL_KEY_FILE")
            engine = Engine.open(path, key, device)
        except Exception as exc:
            _engine_problem = f"the embedding model could not be opened: {exc}"
            raise
        _engine = engine
        _served_model_metric(previous, engine)
        logger.info(
            "embedding model %s opened from %s on %s (key %s; languages %s; relevance floor %s)", engine.model_id,
            path, engine.device, engine.key_id, ",".join(engine.languages) or "not stated",
            "not calibrated" if engine.relevance_floor is None else engine.relevance_floor,
        )
        return engine


def engine_status() -> tuple[bool, str]:
    """(ready, reason) for a readiness check."""
    engine = _engine
    if engine is None:
        return False, _engine_problem
    return True, f"{engine.model_id} on {engine.device}"
