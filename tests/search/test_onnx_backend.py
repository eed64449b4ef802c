"""The ONNX Runtime backend: the encoder exported to ONNX when the model is sealed, run on the CPU
from the decrypted bytes, against sentence-transformers and the torch engine on the same bundle."""
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.management import call_command

from keystore import keys as keystore_keys
from keystore.bundle import open_bundle
from search import onnx_export
from search.engine import Engine, EngineError, EngineUnavailable, engine_status, get_engine, open_engine, set_engine
from search.engine import embedding as engine_embedding
from search.engine.onnx_backend import DISABLED_OPTIMIZERS_ENTRY, ONNX_FILE, choose_backend
from search.legacy import seal_model_folder
from search.onnx_export import ONNX_WEIGHTS_LIMIT, export_onnx, float32_weights_size
from search.sealing import seal_folder
from tests.search.conftest import MINILM_ID, MINILM_RELEVANCE_FLOOR
from tests.search.test_engine import DATA, TEXTS, cosine_rows, files_under, minilm_sealed_with_graph

PARITY = 0.99999  # SPEC §7, the same bar as the torch engine's
QWEN3_TEXTS = [
    "how do i reset my password",
    "vpn",
    "the database server is slow and the cpu is busy " * 4,  # over the tiny model's 24 tokens
]


def recording_open_bundle(buffers):
    """``open_bundle`` into bytearrays the test keeps, to look at the plaintext buffer afterwards."""
    def opener(path, key):
        return open_bundle(path, key, allocate=lambda n: buffers.append(bytearray(n)) or buffers[-1])
    return opener


def run_command(*args):
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), verbosity=0)
    return out.getvalue()


# --- sealing ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_onnx_sealing(tmp_path_factory, minilm_dir, model_key):
    return minilm_sealed_with_graph(tmp_path_factory, minilm_dir, model_key)


@pytest.fixture(scope="module")
def sealed_minilm_onnx(minilm_onnx_sealing):
    return minilm_onnx_sealing.path


@pytest.fixture(scope="module")
def minilm_onnx_engine(sealed_minilm_onnx, model_key):
    engine = Engine.open(sealed_minilm_onnx, model_key, device="cpu")
    yield engine
    engine.close()


def test_sealing_exports_the_bare_encoder_into_the_bundle(minilm_onnx_sealing, model_key):
    import onnx

    # Opset 23: attention as one fused operator (search/onnx_export.py, ONNX_OPSETS).
    note = minilm_onnx_sealing.header["onnx"]
    assert note.startswith("included (86.") and "opset 23" in note
    with open_bundle(minilm_onnx_sealing.path, model_key) as bundle:
        assert {"model.safetensors", "tokenizer.json", ONNX_FILE} <= set(bundle.files)
        graph = onnx.load_from_string(bytes(bundle.files[ONNX_FILE]))

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [(i.name, dims(i)) for i in graph.graph.input] == [
        ("input_ids", ["batch", "sequence"]), ("attention_mask", ["batch", "sequence"])]
    assert [(o.name, dims(o)) for o in graph.graph.output] == [("last_hidden_state", ["batch", "sequence", 384])]


def test_sealing_with_the_graph_writes_nothing_but_the_bundle(minilm_onnx_sealing):
    sealing = minilm_onnx_sealing
    # The bundle goes to a temporary name beside it (encrypted), then is moved into place.
    assert sealing.written and all(p.startswith(str(sealing.out_dir)) for p in sealing.written), sealing.written
    assert sealing.out == [str(sealing.path)]
    assert sealing.tmp == [] and sealing.cwd == []
    assert sealing.model_unchanged


# --- the engine on ONNX Runtime ----------------------------------------------------------


def test_an_onnx_engine_builds_no_torch_model_and_keeps_no_plaintext_buffer(minilm_onnx_engine, model_key):
    engine = minilm_onnx_engine
    assert engine.backend == "onnx" and engine.device == "cpu"
    assert engine.model is None and engine._bundle is None
    assert engine.dimensions == 384 and engine.max_tokens == 256
    assert engine.model_id == MINILM_ID and engine.key_id == keystore_keys.key_id(model_key)
    assert engine.languages == ("en",) and engine.relevance_floor == MINILM_RELEVANCE_FLOOR
    assert engine.settings.pooling == "mean" and engine.settings.padding_side == "right"


@pytest.mark.parametrize("name", TEXTS)
def test_minilm_on_onnx_matches_sentence_transformers(minilm_onnx_engine, minilm_reference, name):
    ours = minilm_onnx_engine.embed([TEXTS[name]]).vectors
    reference = minilm_reference.encode([TEXTS[name]], convert_to_numpy=True)
    assert cosine_rows(ours, reference)[0] >= PARITY


def test_truncation_and_token_counts_are_the_torch_engines(minilm_onnx_engine, minilm_engine, minilm_reference):
    texts = list(TEXTS.values())
    onnx, torch_result = minilm_onnx_engine.embed(texts, kind="document"), minilm_engine.embed(texts, kind="document")
    assert minilm_engine.backend == "torch"
    assert onnx.truncated == torch_result.truncated == [False, False, False, True]
    assert onnx.token_counts == torch_result.token_counts and onnx.token_counts[-1] == 256
    assert cosine_rows(onnx.vectors, torch_result.vectors).min() >= PARITY
    assert cosine_rows(onnx.vectors, minilm_reference.encode(texts, convert_to_numpy=True)).min() >= PARITY


def test_a_mixed_length_batch_equals_each_text_alone(minilm_onnx_engine, minilm_reference):
    lines = (DATA / "faq-kb.txt").read_text(encoding="utf-8").splitlines()[:12]
    texts = lines + [TEXTS["over-length"], "vpn", TEXTS["chinese"]]
    together = minilm_onnx_engine.embed(texts, kind="document")
    alone = np.vstack([minilm_onnx_engine.embed([t], kind="document").vectors for t in texts])
    assert cosine_rows(together.vectors, alone).min() >= PARITY
    assert cosine_rows(together.vectors, minilm_reference.encode(texts, convert_to_numpy=True)).min() >= PARITY
    assert np.allclose(np.linalg.norm(together.vectors, axis=1), 1.0, atol=1e-5)
    short = minilm_onnx_engine.embed(texts[:2], dimensions=64).vectors
    assert short.shape == (2, 64) and np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)


def test_the_session_is_built_from_bytes_and_every_plaintext_copy_is_wiped(sealed_minilm_onnx, model_key,
                                                                          monkeypatch):
    import onnxruntime

    handed = []
    real_session = onnxruntime.InferenceSession

    def recording_session(model, *args, **kwargs):
        handed.append(model)
        return real_session(model, *args, **kwargs)

    buffers = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", recording_session)
    monkeypatch.setattr(engine_embedding, "open_bundle", recording_open_bundle(buffers))
    # That it writes no file either: test_engine.py, test_opening_writes_no_file[onnx].
    engine = Engine.open(sealed_minilm_onnx, model_key, device="cpu")
    try:
        engine.embed(["the graph is handed over as bytes"])
        assert engine.backend == "onnx"
        assert len(handed) == 1 and type(handed[0]) is bytes  # the graph itself, never a path
        assert len(handed[0]) > 80 * 2**20 and not any(handed[0])  # our copy of it, zeroed once the session was built
        assert engine.onnx.session._model_bytes is None  # and not kept by the session
        assert len(buffers) == 1 and not any(buffers[0])  # the decrypted bundle, wiped
    finally:
        engine.close()


def test_the_session_runs_on_torchs_thread_count_one_layer_at_a_time(sealed_minilm_onnx, model_key):
    import onnxruntime

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as gunicorn's post_worker_init does from portal/sizing.py
    try:
        engine = Engine.open(sealed_minilm_onnx, model_key, device="cpu")
    finally:
        torch.set_num_threads(threads)
    try:
        options = engine.onnx.session.get_session_options()
        assert engine.onnx.threads == options.intra_op_num_threads == 1
        assert options.inter_op_num_threads == 1
        assert options.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert engine.onnx.session.get_providers() == ["CPUExecutionProvider"]
        # The arena's peak goes back after every run (a bulk import batch would otherwise stay resident).
        assert engine.onnx._run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    finally:
        engine.close()


def test_the_session_runs_no_skip_layer_normalization(sealed_minilm_onnx, model_key, minilm_onnx_engine, tmp_path):
    # DISABLED_OPTIMIZERS: ONNX Runtime's fused Add + LayerNormalization kernel
    # was the slower one here (bench/onnx_graphs.py). A session built with the
    # engine's setting, profiled, runs the plain operators instead.
    import onnxruntime

    entry = minilm_onnx_engine.onnx.session.get_session_options().get_session_config_entry(DISABLED_OPTIMIZERS_ENTRY)
    assert entry == "SkipLayerNormFusion"
    engines = onnxruntime.SessionOptions()  # a copy of the engine's setting, not its own options object
    engines.add_session_config_entry(DISABLED_OPTIMIZERS_ENTRY, entry)
    ran = {}
    bundle = open_bundle(sealed_minilm_onnx, model_key)
    try:
        for name, session_options in (("engine's", engines), ("every fusion", onnxruntime.SessionOptions())):
            session_options.enable_profiling = True  # a JSON of operator names and timings, no weights
            session_options.profile_file_prefix = str(tmp_path / name.replace(" ", "-").replace("'", ""))
            session = onnxruntime.InferenceSession(bytes(bundle.files[ONNX_FILE]), session_options,
                                                   providers=["CPUExecutionProvider"])
            session.run(None, {"input_ids": np.full((1, 8), 2000, np.int64),
                               "attention_mask": np.ones((1, 8), np.int64)})
            profile = Path(session.end_profiling())
            ran[name] = {e["args"].get("op_name") for e in json.loads(profile.read_text()) if e.get("cat") == "Node"}
            profile.unlink()
    finally:
        bundle.wipe()
    assert "SkipLayerNormalization" in ran["every fusion"]  # the rewrite exists: the check can fail
    assert "SkipLayerNormalization" not in ran["engine's"] and "LayerNormalization" in ran["engine's"]


def test_torch_chosen_for_a_bundle_with_a_graph_discards_the_graph(sealed_minilm_onnx, model_key, minilm_onnx_engine):
    engine = Engine.open(sealed_minilm_onnx, model_key, device="cpu", backend="torch")
    try:
        assert engine.backend == "torch" and engine.onnx is None and engine.model is not None
        assert ONNX_FILE not in engine._bundle.files and "model.safetensors" in engine._bundle.files
        texts = [TEXTS["english"], TEXTS["over-length"]]
        assert cosine_rows(engine.embed(texts).vectors, minilm_onnx_engine.embed(texts).vectors).min() >= PARITY
    finally:
        engine.close()


def test_onnx_runtime_keeps_and_sends_no_telemetry(tmp_path):
    """ONNX Runtime 1.29+ queues telemetry under ~/.cache/Microsoft and a session file in TMPDIR from
    its first import, unless told not to before it; importing the engine tells it. In a fresh process:
    in this one, whatever imported onnxruntime first decided."""
    home, private_tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    private_tmp.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(private_tmp)}
    for name in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME"):
        env.pop(name, None)
    program = (
        "import search.engine, onnxruntime\n"
        "from onnx import TensorProto, helper\n"
        "value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])\n"
        "graph = helper.make_graph([helper.make_node('Identity', ['x'], ['y'])], 'g', [value('x')], [value('y')])\n"
        "model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])\n"
        "session = onnxruntime.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])\n"
        "import numpy\n"
        "assert session.run(None, {'x': numpy.ones(1, numpy.float32)})[0][0] == 1\n"
    )
    subprocess.run([sys.executable, "-c", program], env=env, cwd=Path(__file__).resolve().parents[2], check=True,
                   capture_output=True, timeout=120)
    assert files_under(home) == [] and files_under(private_tmp) == []


# --- choosing the backend ------------------------------------------------------------------


@pytest.mark.parametrize("setting,device,has_graph,expected", [
    ("auto", "cpu", True, "onnx"),
    ("auto", "cpu", False, "torch"),
    ("auto", "cuda", True, "torch"),
    (" AUTO ", "cpu", True, "onnx"),
    ("torch", "cpu", True, "torch"),
    ("torch", "cuda", False, "torch"),
    ("onnx", "cpu", True, "onnx"),
])
def test_choose_backend(setting, device, has_graph, expected):
    files = {ONNX_FILE: memoryview(b"graph")} if has_graph else {}
    assert choose_backend(setting, torch.device(device), files) == expected


@pytest.mark.parametrize("setting,device,has_graph,message", [
    ("onnx", "cpu", False, "holds no ONNX graph"),
    ("onnx", "cuda", True, "CPU only"),
    ("tensorrt", "cpu", True, "EMBED_BACKEND must be auto, torch or onnx"),
])
def test_a_backend_that_cannot_be_honoured_is_an_error(setting, device, has_graph, message):
    files = {ONNX_FILE: memoryview(b"graph")} if has_graph else {}
    with pytest.raises(EngineError, match=message):
        choose_backend(setting, torch.device(device), files)


@pytest.fixture
def process_engine_slot():
    """Detach whatever engine the process serves and put it back afterwards (closing any opened here)."""
    previous = set_engine(None)
    yield
    opened = set_engine(previous)
    if opened is not None and opened is not previous:
        opened.close()


def test_embed_backend_onnx_without_a_graph_fails_closed_with_a_clear_error(sealed_tiny_qwen3, model_key, settings,
                                                                           process_engine_slot, monkeypatch):
    buffers = []
    monkeypatch.setattr(engine_embedding, "open_bundle", recording_open_bundle(buffers))
    settings.EMBED_BACKEND = "onnx"  # open_engine reads it, as in a worker
    with pytest.raises(EngineError, match=r"EMBED_BACKEND is 'onnx' but the sealed bundle holds no ONNX graph"):
        open_engine(sealed_tiny_qwen3, model_key, "cpu")
    with pytest.raises(EngineUnavailable):
        get_engine()
    ready, reason = engine_status()
    assert not ready and "EMBED_BACKEND" in reason and "model_seal" in reason
    assert len(buffers) == 1 and not any(buffers[0])


def test_readiness_says_which_backend_runs(sealed_minilm_onnx, sealed_tiny_qwen3, model_key, settings,
                                           process_engine_slot, caplog):
    settings.EMBED_BACKEND = "auto"
    with caplog.at_level(logging.INFO, logger="search.engine"):
        open_engine(sealed_minilm_onnx, model_key, "cpu")
    assert engine_status() == (True, f"{MINILM_ID} on cpu (onnx)")
    assert f"embedding model {MINILM_ID} opened" in caplog.text and "on cpu with onnx" in caplog.text
    open_engine(sealed_tiny_qwen3, model_key, "cpu")  # sealed without a graph
    assert engine_status() == (True, "test/tiny-qwen3 on cpu (torch)")


def test_auto_runs_torch_when_the_sealed_graph_cannot_serve(tmp_path, tiny_qwen3_dir, model_key, caplog):
    path = tmp_path / "foreign-graph.q3e.enc"
    seal_folder(tiny_qwen3_dir, path, model_key, extra_files={ONNX_FILE: b"not an onnx graph"})
    with caplog.at_level(logging.WARNING, logger="search.engine"):
        engine = Engine.open(path, model_key, device="cpu")
    try:
        assert engine.backend == "torch" and "cannot serve, running torch instead" in caplog.text
    finally:
        engine.close()
    with pytest.raises(EngineError, match="ONNX Runtime cannot load the sealed graph"):
        Engine.open(path, model_key, device="cpu", backend="onnx")


# --- model_seal ----------------------------------------------------------------------------


def test_model_seal_no_onnx_seals_no_graph_and_the_bundle_runs_torch(tmp_path, tiny_qwen3_dir):
    folder = shutil.copytree(tiny_qwen3_dir, tmp_path / "with-its-own-graph")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"a graph shipped with the model")  # as on the Hugging Face hub
    bundle = tmp_path / "no-onnx.q3e.enc"
    out = run_command("model_seal", str(folder), str(bundle), "--no-onnx")
    assert "ONNX graph: not included (--no-onnx)" in out
    key = keystore_keys.get_keyring().model_key
    with open_bundle(bundle, key) as opened:
        assert ONNX_FILE not in opened.files and "model.safetensors" in opened.files
    engine = Engine.open(bundle, key, device="cpu")
    try:
        assert engine.backend == "torch"
    finally:
        engine.close()


def test_model_seal_says_so_and_seals_without_a_graph_when_the_export_fails(tmp_path, tiny_qwen3_dir, monkeypatch):
    def unsupported(files):
        raise RuntimeError("no ONNX translation for aten::imaginary_op\nand a long traceback")

    monkeypatch.setattr(onnx_export, "_export", unsupported)
    bundle = tmp_path / "no-export.q3e.enc"
    out = run_command("model_seal", str(tiny_qwen3_dir), str(bundle))
    assert ("ONNX graph: not included: the export failed (RuntimeError: no ONNX translation for "
            "aten::imaginary_op); the model runs on torch") in out
    with open_bundle(bundle, keystore_keys.get_keyring().model_key) as opened:
        assert ONNX_FILE not in opened.files


def test_weights_over_the_onnx_limit_are_not_exported(tmp_path):
    def header_only(tensors):  # a safetensors header; its data never has to exist to be measured
        header = json.dumps(tensors).encode()
        return len(header).to_bytes(8, "little") + header

    # Qwen3-Embedding-4B's size class: bfloat16 weights that are 4 GiB in float32.
    big = header_only({"embed.weight": {"dtype": "BF16", "shape": [2**20, 2**10], "data_offsets": [0, 2**31]}})
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(big)
    files = {"config.json": b'{"model_type": "qwen3"}', "model.safetensors": folder / "model.safetensors"}
    assert float32_weights_size(files) == 2**32 > ONNX_WEIGHTS_LIMIT
    export = export_onnx(files)
    assert export.graph is None and "exceed ONNX's 2 GB limit; the model runs on torch" in export.note


# --- Qwen3: last-token pooling, left padding -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_qwen3_onnx_engine(tmp_path_factory, tiny_qwen3_dir, model_key):
    path = tmp_path_factory.mktemp("bundles") / "tiny-qwen3-onnx.q3e.enc"
    header = seal_model_folder(tiny_qwen3_dir, path, model_key, model_id="test/tiny-qwen3")
    # ONNX Runtime 1.32 gets opset 23's RotaryEmbedding wrong on untraced shapes; the check at
    # sealing catches it and opset 18 is sealed instead.
    assert header["onnx"].startswith("included") and "opset 18" in header["onnx"]
    engine = Engine.open(path, model_key, device="cpu")
    yield engine
    engine.close()


@pytest.mark.parametrize("kind", ["query", "document"])
def test_qwen3_on_onnx_matches_sentence_transformers_and_the_torch_engine(tiny_qwen3_onnx_engine, tiny_qwen3_engine,
                                                                          tiny_qwen3_dir, kind):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(tiny_qwen3_dir), device="cpu")
    expected = reference.encode(QWEN3_TEXTS, prompt_name="query" if kind == "query" else None,
                                convert_to_numpy=True)
    onnx, torch_result = (e.embed(QWEN3_TEXTS, kind=kind) for e in (tiny_qwen3_onnx_engine, tiny_qwen3_engine))
    assert tiny_qwen3_onnx_engine.backend == "onnx" and tiny_qwen3_engine.backend == "torch"
    assert cosine_rows(onnx.vectors, expected).min() >= PARITY
    assert cosine_rows(onnx.vectors, torch_result.vectors).min() >= PARITY
    assert onnx.truncated == torch_result.truncated and onnx.truncated[-1]
    assert onnx.token_counts == torch_result.token_counts


def test_qwen3_on_onnx_reads_the_last_token_alone_and_in_a_left_padded_batch(tiny_qwen3_onnx_engine):
    assert tiny_qwen3_onnx_engine.settings.padding_side == "left"
    assert tiny_qwen3_onnx_engine.settings.pooling == "lasttoken"
    batch = ["vpn", "how do i find the document about the office printer and the file server", "help"]
    alone = tiny_qwen3_onnx_engine.embed(batch[:1], kind="document").vectors
    together = tiny_qwen3_onnx_engine.embed(batch, kind="document").vectors
    assert cosine_rows(alone, together[:1])[0] >= PARITY
