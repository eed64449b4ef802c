"""Sealing a model folder: which of its files go into the bundle and what the sealed table says about them."""
import json
import os

import pytest

from keystore.bundle import BundleError, open_bundle
from search.sealing import missing_model_files, model_folder_files, seal_folder


@pytest.fixture
def key():
    return os.urandom(32)


def make_model(folder, *, sentence_transformers=True):
    """A folder shaped like a sentence-transformers model as Hugging Face serves it."""
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "_name_or_path": "base/model"}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(os.urandom(300))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    if sentence_transformers:
        (folder / "modules.json").write_text(json.dumps([{"path": "1_Pooling", "type": "Pooling"}]))
        (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "q: "}}))
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "download.lock").write_text("")
    return folder


def sealed_table(folder, out, key, **options):
    seal_folder(folder, out, key, **options)
    with open_bundle(out, key) as bundle:
        return bundle.table, {name: bytes(view) for name, view in bundle.files.items()}


def test_every_file_but_hidden_bookkeeping_is_sealed(tmp_path, key):
    folder = make_model(tmp_path / "model")
    _, files = sealed_table(folder, tmp_path / "m.enc", key)
    assert sorted(files) == [
        "1_Pooling/config.json", "config.json", "config_sentence_transformers.json", "model.safetensors",
        "modules.json", "tokenizer.json",
    ]  # fmt: skip
    assert files["model.safetensors"] == (folder / "model.safetensors").read_bytes()


def test_files_made_in_memory_replace_or_join_and_skipped_files_stay_out(tmp_path, key):
    folder = make_model(tmp_path / "model")
    files = model_folder_files(folder, extra_files={"model.safetensors": b"converted", "extra.txt": b"new"},
                               skip=["./modules.json"])
    assert files["model.safetensors"] == b"converted" and files["extra.txt"] == b"new"
    assert "modules.json" not in files and files["config.json"] == folder / "config.json"


def test_the_table_says_what_the_model_is(tmp_path, key):
    table, _ = sealed_table(make_model(tmp_path / "model"), tmp_path / "m.enc", key)
    assert table["model_type"] == "bert"
    assert table["sentence_transformers"] == {
        "modules": [{"path": "1_Pooling", "type": "Pooling"}], "config": {"prompts": {"query": "q: "}},
    }  # fmt: skip


def test_a_plain_transformers_folder_has_no_sentence_transformers_entry(tmp_path, key):
    table, _ = sealed_table(make_model(tmp_path / "model", sentence_transformers=False), tmp_path / "m.enc", key)
    assert table["sentence_transformers"] is None and table["model_type"] == "bert"


def test_the_operators_model_id_wins(tmp_path, key):
    table, _ = sealed_table(make_model(tmp_path / "model"), tmp_path / "m.enc", key, model_id="acme/embedder")
    assert table["model_id"] == "acme/embedder"


def test_a_hugging_face_cache_folder_names_the_model(tmp_path, key):
    folder = make_model(tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "c9745ed")
    table, _ = sealed_table(folder, tmp_path / "m.enc", key)
    assert table["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_the_model_cards_title_names_the_model_and_else_the_folder(tmp_path, key):
    folder = make_model(tmp_path / "download")
    assert sealed_table(folder, tmp_path / "a.enc", key)[0]["model_id"] == "download"
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# all-MiniLM-L6-v2\nA model.\n")
    assert sealed_table(folder, tmp_path / "b.enc", key)[0]["model_id"] == "all-MiniLM-L6-v2"


def test_what_a_folder_lacks_to_be_a_model(tmp_path):
    folder = make_model(tmp_path / "model")
    assert missing_model_files(folder) == []
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    assert missing_model_files(folder) == []
    (folder / "pytorch_model.bin").unlink()
    (folder / "tokenizer.json").unlink()
    assert missing_model_files(folder) == ["tokenizer.json", "model.safetensors (or pytorch_model.bin)"]


def test_an_empty_folder_or_a_file_is_refused(tmp_path, key):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="nothing to seal"):
        seal_folder(tmp_path / "empty", tmp_path / "m.enc", key)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="is not a folder"):
        seal_folder(tmp_path / "file", tmp_path / "m.enc", key)
    assert not (tmp_path / "m.enc").exists()
