"""Building the model from files in memory: config, text settings, tokenizer, weights, device.

transformers builds the bare encoder (``AutoModel``) from ``config.json`` with
its parameters on the ``meta`` device, and ``load_state_dict(assign=True)``
then gives it the safetensors views, so no parameter is ever allocated twice.
Pooling, normalisation, sequence length and prompts come from the
sentence-transformers files (``modules.json``, ``1_Pooling/config.json``,
``sentence_bert_config.json``, ``config_sentence_transformers.json``), so the
vectors equal ``SentenceTransformer`` on the same plaintext folder.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from tokenizers import Tokenizer
from tokenizers.normalizers import Lowercase
from tokenizers.normalizers import Sequence as NormalizerSequence
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast
from transformers.initialization import no_init_weights

from search.engine.errors import EngineError
from search.engine.files import json_file

QWEN3_DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"

_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_lasttoken": "lasttoken",
}
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_SUPPORTED_MODULES = {"Transformer": "transformer", "Pooling": "pooling", "Normalize": "normalize"}


@dataclass(frozen=True)
class TextSettings:
    """How text becomes a vector, read from the bundle's sentence-transformers files."""

    pooling: str
    max_seq_length: int
    do_lower_case: bool
    prompts: Mapping[str, str]
    padding_side: str


# --- config, text settings and tokenizer -----------------------------------------------


def load_config(files: Mapping[str, memoryview]) -> Any:
    config_dict = json_file(files, "config.json")
    if not isinstance(config_dict, dict) or "model_type" not in config_dict:
        raise EngineError("the bundle holds no config.json with a model_type")
    if config_dict.get("auto_map"):
        raise EngineError("models that need custom code (auto_map in config.json) are not supported")
    model_type = config_dict.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **config_dict)
    except ValueError as exc:
        raise EngineError(f"model type {model_type!r} is not supported by this transformers ({exc})") from None


def read_settings(files: Mapping[str, memoryview], config: Any) -> TextSettings:
    modules = json_file(files, "modules.json") or [
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
    pooling_config = json_file(files, f"{pooling_path}/config.json") if pooling_path else None
    pooling = _pooling_mode(pooling_config or {}, config)

    transformer_config = json_file(files, "sentence_bert_config.json") or {}
    tokenizer_config = json_file(files, "tokenizer_config.json") or {}
    max_seq_length = transformer_config.get("max_seq_length")
    if max_seq_length is None:
        candidates = [tokenizer_config.get("model_max_length"), getattr(config, "max_position_embeddings", None)]
        limits = [int(c) for c in candidates if isinstance(c, (int, float)) and 0 < c < 10**7]
        max_seq_length = min(limits) if limits else 512

    st_config = json_file(files, "config_sentence_transformers.json") or {}
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


def build_tokenizer(files: Mapping[str, memoryview], settings: TextSettings) -> PreTrainedTokenizerFast:
    if "tokenizer.json" not in files:
        raise EngineError("the bundle holds no tokenizer.json (the engine needs a fast tokenizer)")
    backend = Tokenizer.from_str(bytes(files["tokenizer.json"]).decode("utf-8"))
    if settings.do_lower_case:
        backend.normalizer = NormalizerSequence(
            [Lowercase()] + ([backend.normalizer] if backend.normalizer is not None else [])
        )
    options: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        options.update(json_file(files, name) or {})
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


# --- the model -------------------------------------------------------------------------

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


def build_model(config: Any, state: dict[str, torch.Tensor]) -> torch.nn.Module:
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


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The sentence-transformers Pooling module's result for ``mode`` (one of TextSettings.pooling)."""
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


# --- the device ------------------------------------------------------------------------


def move_parameters(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
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
