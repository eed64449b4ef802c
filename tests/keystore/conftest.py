"""Fixtures for the sealed-bundle tests: a small model-shaped folder and a recording allocator."""
import json
import os

import pytest

# Strings that exist only inside the sealed files: the public part of a bundle must not show them.
SECRET_MARKERS = (
    "config.json",
    "tokenizer.json",
    "1_Pooling",
    "model_type",
    "acme-secret-architecture",
    "vocab-word-zebra",
    "sealed-model-id",
)


@pytest.fixture
def key():
    return os.urandom(32)


@pytest.fixture
def model_dir(tmp_path):
    """A folder shaped like a sentence-transformers model, with many chunks' worth of 'weights'."""
    folder = tmp_path / "plain-model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "acme-secret-architecture", "hidden_size": 8}))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"vocab-word-zebra": 0}}}))
    (folder / "modules.json").write_text(json.dumps([{"path": "1_Pooling", "type": "Pooling"}]))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (folder / "model.safetensors").write_bytes(os.urandom(5000))
    return folder


@pytest.fixture
def model_files(model_dir):
    """The folder's files as the sealer hands them to ``seal_bundle``: name in the bundle to path."""
    return {p.relative_to(model_dir).as_posix(): p for p in sorted(model_dir.rglob("*")) if p.is_file()}


class RecordingAllocator:
    """Hands out bytearrays and keeps them, so a test can look at the plaintext buffer afterwards."""

    def __init__(self):
        self.buffers = []

    def __call__(self, size):
        buffer = bytearray(size)
        self.buffers.append(buffer)
        return buffer


@pytest.fixture
def allocator():
    return RecordingAllocator()
