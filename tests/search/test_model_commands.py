"""model_seal, model_inspect and model_verify through Django's call_command."""
import io
import os

import pytest
from django.core.management import CommandError, call_command

from keystore import keys as keystore_keys
from keystore.bundle import inspect_bundle, open_bundle

@pytest.fixture
def command_key():
    key = keystore_keys.get_keyring().model_key
    assert key is not None, "tests/conftest.py installs a model key"
    return key


def run(*args):
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), verbosity=0)
    return out.getvalue()


def test_seal_inspect_verify(tmp_path, tiny_qwen3_dir, command_key):
    bundle = tmp_path / "tiny.q3e.enc"
    out = run("model_seal", str(tiny_qwen3_dir), str(bundle), "--model-id", "test/tiny")
    assert "sealed" in out and "ONNX graph: included" in out
    with open_bundle(bundle, command_key) as opened:
        assert opened.model_id == "test/tiny" and "tokenizer.json" in opened.files
        assert "onnx/model.onnx" in opened.files
    shown = run("model_inspect", str(bundle))
    assert f"key_id: {keystore_keys.key_id(command_key)}" in shown and "chunk_count: 1" in shown
    assert "OK" in run("model_verify", str(bundle))


def test_seal_refuses_to_overwrite_without_force(tmp_path, tiny_qwen3_dir):
    bundle = tmp_path / "tiny.q3e.enc"
    bundle.write_bytes(b"existing")
    with pytest.raises(CommandError, match="--force"):
        run("model_seal", str(tiny_qwen3_dir), str(bundle))
    run("model_seal", str(tiny_qwen3_dir), str(bundle), "--force", "--no-onnx")
    assert inspect_bundle(bundle)["format_version"] == 1


def test_verify_fails_with_exit_1_on_a_damaged_bundle(tmp_path, tiny_qwen3_dir):
    bundle = tmp_path / "tiny.q3e.enc"
    run("model_seal", str(tiny_qwen3_dir), str(bundle), "--chunk-size", "4096", "--no-onnx")
    data = bytearray(bundle.read_bytes())
    data[5000] ^= 1
    bundle.write_bytes(bytes(data))
    with pytest.raises(CommandError, match="FAILED verification: chunk 1 of") as caught:
        run("model_verify", str(bundle))
    assert caught.value.returncode == 1


def test_legacy_cbc_reseal(tmp_path, tiny_qwen3_dir, command_key):
    import torch
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from safetensors.torch import load_file

    raw = io.BytesIO()
    torch.save(load_file(tiny_qwen3_dir / "model.safetensors"), raw)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(command_key), modes.CBC(iv)).encryptor()
    legacy = tmp_path / "old.q3e.enc"
    legacy.write_bytes(iv + encryptor.update(padder.update(raw.getvalue()) + padder.finalize()) + encryptor.finalize())
    out = tmp_path / "new.q3e.enc"
    sealed = run("model_seal", "--legacy-cbc", str(legacy), str(out), "--config-dir", str(tiny_qwen3_dir))
    assert "ONNX graph: included" in sealed
    assert "OK" in run("model_verify", str(out))


@pytest.mark.parametrize("command", ["model_inspect", "model_verify"])
def test_bad_input_is_a_command_error(tmp_path, command):
    not_a_bundle = tmp_path / "notes.txt"
    not_a_bundle.write_text("hello")
    with pytest.raises(CommandError, match="not a sealed model bundle"):
        run(command, str(not_a_bundle))
    with pytest.raises(CommandError):
        run(command, str(tmp_path / "missing.q3e.enc"))


def test_a_missing_model_key_names_the_variable(tmp_path, tiny_qwen3_dir, monkeypatch):
    monkeypatch.setattr(keystore_keys.get_keyring(), "model_key", None)
    with pytest.raises(CommandError, match="EMBED_MODEL_KEY"):
        run("model_seal", str(tiny_qwen3_dir), str(tmp_path / "x.q3e.enc"))
    with pytest.raises(CommandError, match="EMBED_MODEL_KEY"):
        run("model_verify", str(tmp_path / "x.q3e.enc"))


def test_model_seal_refuses_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CommandError, match="missing config.json, tokenizer.json, model.safetensors"):
        call_command("model_seal", str(tmp_path), str(tmp_path / "x.q3e.enc"))
    assert not (tmp_path / "x.q3e.enc").exists()


def test_model_inspect_needs_no_key(sealed_minilm):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBED_MODEL_KEY", "AUDIT_HMAC_KEY"))}
    env["PORTAL_DOTENV"] = ""
    result = subprocess.run([sys.executable, "manage.py", "model_inspect", str(sealed_minilm)], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "k_" in result.stdout
