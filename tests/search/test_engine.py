"""The embedding engine opened from a real sealed bundle, against sentence-transformers on the plaintext."""
import ctypes
import io
import json
import os
import pickle
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from keystore.bundle import WrongKeyError, open_bundle
from search.engine import embedding as engine_embedding
from search.engine import (
    Engine,
    EngineError,
    EngineUnavailable,
    engine_status,
    get_engine,
    open_engine,
    safetensors_views,
    set_engine,
)
from search.legacy import reseal_legacy_cbc, seal_model_folder
from search.sealing import seal_folder
from tests.search.conftest import MINILM_ID, MINILM_LANGUAGES, MINILM_RELEVANCE_FLOOR, QWEN3_QUERY_PROMPT

DATA = Path("/work/shared/data")
PARITY = 0.99999
TEXTS = {
    "english": "How do I reset my password when I am locked out of the VPN?",
    "chinese": "我忘记了密码,应该如何重置?请联系信息技术服务台。",
    "mixed-script": "VPN 访问需要 hardware token — Zugang über das VPN braucht ein Token, спасибо!",
    "over-length": " ".join(["the printer on the third floor is out of toner again"] * 40),
}


def cosine_rows(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def buffer_address_range(bundle):
    buffer = bundle._buffer
    start = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))
    return start, start + len(buffer)


# --- parity ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEXTS)
def test_minilm_matches_sentence_transformers(minilm_engine, minilm_reference, name):
    ours = minilm_engine.embed([TEXTS[name]]).vectors
    reference = minilm_reference.encode([TEXTS[name]], convert_to_numpy=True)
    assert cosine_rows(ours, reference)[0] >= PARITY


def test_minilm_batch_matches_sentence_transformers_and_reports_truncation(minilm_engine, minilm_reference):
    result = minilm_engine.embed(list(TEXTS.values()), kind="document")
    reference = minilm_reference.encode(list(TEXTS.values()), convert_to_numpy=True)
    assert cosine_rows(result.vectors, reference).min() >= PARITY
    assert result.truncated == [False, False, False, True]
    assert result.token_counts[-1] == minilm_engine.max_tokens == 256
    assert max(result.token_counts[:-1]) < 256


def test_minilm_metadata_comes_from_the_bundle(minilm_engine, model_key):
    from keystore.keys import key_id

    assert minilm_engine.model_id == MINILM_ID
    assert minilm_engine.dimensions == 384
    assert minilm_engine.key_id == key_id(model_key)
    assert minilm_engine.device == "cpu"
    assert minilm_engine.settings.pooling == "mean"
    assert minilm_engine.settings.prompts == {"query": "", "document": ""}


def test_vectors_are_float32_and_unit_length(minilm_engine):
    vectors = minilm_engine.embed(["one", "two words", ""]).vectors
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_qwen3_matches_sentence_transformers_with_query_prompt(tiny_qwen3_engine, tiny_qwen3_dir):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(tiny_qwen3_dir), device="cpu")
    texts = ["how do i reset my password", "vpn", "the database server is slow and the cpu is busy"]
    queries = reference.encode(texts, prompt_name="query", convert_to_numpy=True)
    documents = reference.encode(texts, convert_to_numpy=True)
    assert cosine_rows(tiny_qwen3_engine.embed(texts, kind="query").vectors, queries).min() >= PARITY
    assert cosine_rows(tiny_qwen3_engine.embed(texts, kind="document").vectors, documents).min() >= PARITY


def test_qwen3_queries_carry_the_instruction_and_documents_do_not(tiny_qwen3_engine):
    assert tiny_qwen3_engine.settings.pooling == "lasttoken"
    assert tiny_qwen3_engine.settings.padding_side == "left"
    query = tiny_qwen3_engine.embed(["reset my password"], kind="query").vectors
    spelled_out = tiny_qwen3_engine.embed([QWEN3_QUERY_PROMPT + "reset my password"], kind="document").vectors
    document = tiny_qwen3_engine.embed(["reset my password"], kind="document").vectors
    assert cosine_rows(query, spelled_out)[0] >= PARITY
    assert cosine_rows(query, document)[0] < 0.999


def test_qwen3_last_token_is_the_same_alone_and_in_a_left_padded_batch(tiny_qwen3_engine):
    short = "vpn"
    batch = [short, "how do i find the document about the office printer and the file server", "help"]
    alone = tiny_qwen3_engine.embed([short], kind="document").vectors
    together = tiny_qwen3_engine.embed(batch, kind="document").vectors
    assert cosine_rows(alone, together[:1])[0] >= PARITY


def test_qwen3_default_instruction_when_the_bundle_has_no_prompts(tmp_path, tiny_qwen3_dir, model_key):
    folder = shutil.copytree(tiny_qwen3_dir, tmp_path / "no-prompts")
    (folder / "config_sentence_transformers.json").unlink()
    seal_folder(folder, tmp_path / "b.enc", model_key)
    engine = Engine.open(tmp_path / "b.enc", model_key, device="cpu")
    try:
        assert engine.settings.prompts["query"] == QWEN3_QUERY_PROMPT
        assert engine.settings.prompts["document"] == ""
    finally:
        engine.close()


def test_weights_saved_with_a_model_prefix_load_the_same(tmp_path, tiny_qwen3_dir, tiny_qwen3_engine, model_key):
    from safetensors.torch import load_file, save

    state = load_file(tiny_qwen3_dir / "model.safetensors")
    prefixed = save({f"model.{name}": tensor for name, tensor in state.items()})
    path = tmp_path / "prefixed.enc"
    seal_folder(tiny_qwen3_dir, path, model_key, extra_files={"model.safetensors": prefixed})
    engine = Engine.open(path, model_key, device="cpu")
    try:
        texts = ["where is my account email"]
        assert np.allclose(engine.embed(texts).vectors, tiny_qwen3_engine.embed(texts).vectors, atol=1e-6)
    finally:
        engine.close()


# --- how the model is built -------------------------------------------------------------


def test_weights_are_views_into_the_one_decrypted_buffer(minilm_engine):
    start, end = buffer_address_range(minilm_engine._bundle)
    for name, parameter in minilm_engine.model.named_parameters():
        assert start <= parameter.data_ptr() < end, f"{name} was copied out of the bundle buffer"


def test_non_persistent_buffers_are_rebuilt_not_left_on_meta(minilm_engine, tiny_qwen3_engine):
    for engine in (minilm_engine, tiny_qwen3_engine):
        for name, tensor in [*engine.model.named_parameters(), *engine.model.named_buffers()]:
            assert not tensor.is_meta, name
    position_ids = minilm_engine.model.embeddings.position_ids
    assert torch.equal(position_ids[0], torch.arange(position_ids.shape[-1]))
    inv_freq = tiny_qwen3_engine.model.rotary_emb.inv_freq
    expected = 1.0 / (tiny_qwen3_engine.model.config.rope_parameters["rope_theta"] ** (torch.arange(0, 16, 2) / 16))
    assert torch.allclose(inv_freq.float(), expected.float())


def test_opening_and_embedding_never_unpickle(sealed_minilm, model_key, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    engine = Engine.open(sealed_minilm, model_key, device="cpu")
    try:
        assert engine.embed(["no pickle here"]).vectors.shape == (1, 384)
    finally:
        engine.close()


class WriteWatcher:
    """Python-level opens for writing, recorded while active (audit hooks cannot be removed)."""

    active: list | None = None

    @classmethod
    def hook(cls, event, args):
        if cls.active is not None and event == "open":
            path, mode, flags = args
            writing = (mode and any(c in str(mode) for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
            if writing and isinstance(path, (str, bytes, os.PathLike)):
                cls.active.append(os.fsdecode(path))


sys.addaudithook(WriteWatcher.hook)


def snapshot(folder):
    return sorted(str(p) for p in Path(folder).rglob("*"))


def files_under(folder):
    """Every file below ``folder``. torch creates its empty cache folder (torchinductor_<user>) in
    TMPDIR when the exporter is imported; it writes nothing into it, and folders hold no plaintext."""
    return sorted(str(p) for p in Path(folder).rglob("*") if not p.is_dir())


_SEALED_WITH_GRAPH = {}


def minilm_sealed_with_graph(tmp_path_factory, minilm_dir, model_key):
    """MiniLM sealed as `manage.py model_seal` seals it (the graph exported), with every file the
    seal wrote recorded: Python-level opens for writing, and what appeared in TMPDIR and the cwd.
    Sealed once per session and key (the export takes seconds): here and in test_onnx_backend.py."""
    if model_key not in _SEALED_WITH_GRAPH:
        _SEALED_WITH_GRAPH[model_key] = _seal_minilm_with_graph(tmp_path_factory, minilm_dir, model_key)
    return _SEALED_WITH_GRAPH[model_key]


def _seal_minilm_with_graph(tmp_path_factory, minilm_dir, model_key):
    root = tmp_path_factory.mktemp("onnx-seal")
    private_tmp, workdir, out_dir = root / "tmp", root / "cwd", root / "out"
    for folder in (private_tmp, workdir, out_dir):
        folder.mkdir()
    model_before = snapshot(minilm_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(private_tmp))
        patch.setenv("TMPDIR", str(private_tmp))
        patch.chdir(workdir)
        WriteWatcher.active = []
        try:
            header = seal_model_folder(minilm_dir, out_dir / "minilm.q3e.enc", model_key, model_id=MINILM_ID,
                                       languages=MINILM_LANGUAGES, relevance_floor=MINILM_RELEVANCE_FLOOR)
            written = WriteWatcher.active
        finally:
            WriteWatcher.active = None
    return SimpleNamespace(path=out_dir / "minilm.q3e.enc", header=header, written=written, out_dir=out_dir,
                           tmp=files_under(private_tmp), cwd=files_under(workdir), out=snapshot(out_dir),
                           model_unchanged=snapshot(minilm_dir) == model_before)


@pytest.fixture
def sealed_minilm_with_graph(tmp_path_factory, minilm_dir, model_key):
    return minilm_sealed_with_graph(tmp_path_factory, minilm_dir, model_key).path


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_opening_writes_no_file(backend, request, model_key, tmp_path, monkeypatch):
    bundle = request.getfixturevalue("sealed_minilm" if backend == "torch" else "sealed_minilm_with_graph")
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.chdir(workdir)
    bundle_dir_before = snapshot(bundle.parent)
    WriteWatcher.active = []
    try:
        engine = Engine.open(bundle, model_key, device="cpu", backend=backend)
        try:
            engine.embed(["nothing lands on disk"])
            opened_with = engine.backend
        finally:
            engine.close()
        written = WriteWatcher.active
    finally:
        WriteWatcher.active = None
    assert opened_with == backend
    assert written == []
    assert files_under(private_tmp) == [] and files_under(workdir) == []
    assert snapshot(bundle.parent) == bundle_dir_before


# --- failures ----------------------------------------------------------------------


def test_pickled_weights_are_refused_and_the_buffer_wiped(tmp_path, tiny_qwen3_dir, model_key, monkeypatch):
    from safetensors.torch import load_file

    folder = shutil.copytree(tiny_qwen3_dir, tmp_path / "pickled")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    seal_folder(folder, tmp_path / "pickled.enc", model_key)  # sealed as is, not converted
    buffers = []

    def recording_open_bundle(path, key):
        return open_bundle(path, key, allocate=lambda n: buffers.append(bytearray(n)) or buffers[-1])

    monkeypatch.setattr(engine_embedding, "open_bundle", recording_open_bundle)  # looked up there, not in the package
    with pytest.raises(EngineError, match="pytorch_model.bin"):
        Engine.open(tmp_path / "pickled.enc", model_key, device="cpu")
    assert len(buffers) == 1 and not any(buffers[0])


def test_model_seal_converts_pickled_weights_in_memory(tmp_path, tiny_qwen3_dir, tiny_qwen3_engine, model_key):
    from safetensors.torch import load_file

    folder = shutil.copytree(tiny_qwen3_dir, tmp_path / "pickled")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    before = snapshot(folder)
    seal_model_folder(folder, tmp_path / "converted.enc", model_key, onnx=False)  # torch: compared to torch below
    assert snapshot(folder) == before, "the conversion wrote to the model folder"
    with open_bundle(tmp_path / "converted.enc", model_key) as bundle:
        assert "model.safetensors" in bundle.files and "pytorch_model.bin" not in bundle.files
    engine = Engine.open(tmp_path / "converted.enc", model_key, device="cpu")
    try:
        texts = ["find my password"]
        assert np.allclose(engine.embed(texts).vectors, tiny_qwen3_engine.embed(texts).vectors, atol=1e-6)
    finally:
        engine.close()


def test_legacy_cbc_file_reseals_to_identical_tensors(tmp_path, tiny_qwen3_dir, model_key):
    from safetensors.torch import load_file

    state = load_file(tiny_qwen3_dir / "model.safetensors")
    raw = io.BytesIO()
    torch.save(state, raw)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(model_key), modes.CBC(iv)).encryptor()
    legacy = tmp_path / "old.q3e.enc"
    legacy.write_bytes(iv + encryptor.update(padder.update(raw.getvalue()) + padder.finalize()) + encryptor.finalize())

    resealed = tmp_path / "new.q3e.enc"
    reseal_legacy_cbc(legacy, resealed, model_key, config_dir=tiny_qwen3_dir, onnx=False)  # torch: its tensors
    with open_bundle(resealed, model_key) as bundle:
        tensors = safetensors_views(bundle.files["model.safetensors"])
        assert tensors.keys() == state.keys()
        assert all(torch.equal(tensors[name], state[name]) for name in state)
    engine = Engine.open(resealed, model_key, device="cpu")
    try:
        loaded = engine.model.state_dict()
        assert all(torch.equal(loaded[name], state[name]) for name in state)
    finally:
        engine.close()


@pytest.fixture
def process_engine_slot():
    """Detach whatever engine the process serves (without closing it) and put it back afterwards."""
    previous = set_engine(None)
    yield
    set_engine(previous)


def test_a_failed_open_serves_nothing(sealed_tiny_qwen3, model_key, process_engine_slot):
    open_engine(sealed_tiny_qwen3, model_key, "cpu")
    assert get_engine().model_id == "test/tiny-qwen3"
    assert engine_status() == (True, "test/tiny-qwen3 on cpu (torch)")
    with pytest.raises(WrongKeyError):
        open_engine(sealed_tiny_qwen3, os.urandom(32), "cpu")
    with pytest.raises(EngineUnavailable, match="wrong key"):
        get_engine()
    ready, reason = engine_status()
    assert not ready and "wrong key" in reason


def test_no_key_is_a_clear_error(sealed_tiny_qwen3, process_engine_slot):
    with pytest.raises(EngineError, match="EMBED_MODEL_KEY"):
        open_engine(sealed_tiny_qwen3, None, "cpu")
    with pytest.raises(EngineUnavailable):
        get_engine()


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu:0"])
def test_unknown_device_is_refused(sealed_tiny_qwen3, model_key, device):
    with pytest.raises(EngineError, match="EMBED_DEVICE"):
        Engine.open(sealed_tiny_qwen3, model_key, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_refused(sealed_tiny_qwen3, model_key):
    with pytest.raises(EngineError, match="no CUDA device"):
        Engine.open(sealed_tiny_qwen3, model_key, device="cuda")


# --- the API --------------------------------------------------------------------------


def test_dimensions_truncate_and_renormalise(minilm_engine):
    texts = ["reset my password", "printer out of toner"]
    full = minilm_engine.embed(texts).vectors
    short = minilm_engine.embed(texts, dimensions=128).vectors
    assert short.shape == (2, 128)
    assert np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    assert np.allclose(short, expected, atol=1e-6)


@pytest.mark.parametrize("dimensions", [0, -1, 385, 1.5, True, "64"])
def test_bad_dimensions_are_a_value_error(minilm_engine, dimensions):
    with pytest.raises(ValueError, match="dimensions"):
        minilm_engine.embed(["x"], dimensions=dimensions)


def test_bad_kind_and_bad_texts_are_refused(minilm_engine):
    with pytest.raises(ValueError, match="kind"):
        minilm_engine.embed(["x"], kind="passage")
    with pytest.raises(TypeError):
        minilm_engine.embed("a bare string")
    assert minilm_engine.embed([]).vectors.shape == (0, 384)


def test_concurrent_callers_get_the_same_vectors_as_serial_calls(minilm_engine, monkeypatch):
    lines = (DATA / "faq-kb.txt").read_text(encoding="utf-8").splitlines()
    requests = [lines[i::8][: 3 + i] for i in range(8)]
    serial = [minilm_engine.embed(texts, kind="document").vectors for texts in requests]
    results: list = [None] * 8
    start = threading.Barrier(8)
    forward_passes = []
    run_batch = minilm_engine._batcher._run_batch

    def counting_run_batch(batch):
        forward_passes.append(len(batch))
        return run_batch(batch)

    monkeypatch.setattr(minilm_engine._batcher, "_run_batch", counting_run_batch)

    def call(i):
        start.wait()
        results[i] = minilm_engine.embed(requests[i], kind="document").vectors

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for expected, got in zip(serial, results):
        assert got is not None and got.shape == expected.shape
        assert cosine_rows(expected, got).min() >= PARITY
    assert sum(forward_passes) == sum(len(texts) for texts in requests)
    assert len(forward_passes) < 8, "concurrent callers did not share forward passes"


def test_retrieval_on_the_faq(minilm_engine):
    documents = (DATA / "faq-kb.txt").read_text(encoding="utf-8").splitlines()
    cases = [json.loads(line) for line in (DATA / "faq-queries.jsonl").read_text(encoding="utf-8").splitlines()]
    doc_vectors = minilm_engine.embed(documents, kind="document").vectors
    query_vectors = minilm_engine.embed([case["query"] for case in cases], kind="query").vectors
    ranking = np.argsort(-(query_vectors @ doc_vectors.T), axis=1)
    answers = np.array([case["answer_line"] - 1 for case in cases])
    recall_at_1 = float(np.mean(ranking[:, 0] == answers))
    recall_at_3 = float(np.mean([answer in row[:3] for answer, row in zip(answers, ranking)]))
    print(f"\nFAQ retrieval over {len(documents)} documents: recall@1={recall_at_1:.3f} recall@3={recall_at_3:.3f}")
    assert recall_at_1 >= 0.9
    assert recall_at_3 == 1.0
