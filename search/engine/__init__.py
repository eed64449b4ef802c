"""The embedding engine: a sealed model bundle turned into vectors, once per worker.

The public face; callers import from ``search.engine`` only. Inside:

- ``files``: the model's files in memory (decrypted from the bundle), as JSON
  and as safetensors views into the one plaintext buffer: no copy, no pickle;
- ``model``: the transformers model built on the ``meta`` device from those
  files, the sentence-transformers settings (pooling, prompts, sequence
  length), the tokenizer, the device;
- ``onnx_backend``: on the CPU, the encoder's ONNX graph sealed in the bundle
  run by ONNX Runtime from the decrypted bytes (``EMBED_BACKEND``);
- ``batching``: the micro-batcher that lets concurrent callers share forward
  passes under a token budget;
- ``embedding``: ``Engine`` (open a bundle, ``embed``, ``close``);
- ``process``: the engine this process serves, opened once per worker, fail closed.

Code that replaces one of these names in a test must replace it in the module
that looks it up (``search.engine.embedding.open_bundle``, not
``search.engine.open_bundle``): the names here are only re-exported.
"""
from search.engine.batching import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS
from search.engine.embedding import KINDS, EmbedResult, Engine
from search.engine.errors import EngineError, EngineUnavailable
from search.engine.files import safetensors_views
from search.engine.model import QWEN3_DEFAULT_TASK, TextSettings, resolve_device
from search.engine.process import engine_status, get_engine, open_engine, set_engine

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_BATCH_TOKENS",
    "KINDS",
    "QWEN3_DEFAULT_TASK",
    "EmbedResult",
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "TextSettings",
    "engine_status",
    "get_engine",
    "open_engine",
    "resolve_device",
    "safetensors_views",
    "set_engine",
]
