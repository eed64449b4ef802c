"""Every way a worker's model can fail to open fails closed the same audited
way: no exception escapes (gunicorn would halt the server), the engine is not
served, and `model.open` records the reason class (issue 9, defect 16)."""
import pytest

from audit.ledger.models import AuditEvent
from keystore.keys import get_keyring
from search import engine as engine_module
from search.startup import open_configured_engine
from tests.audit.conftest import audit_writes_refused
from tests.search.conftest import tiny_qwen3_dir  # noqa: F401  (fixture)


@pytest.fixture
def sealed_with_process_key(tmp_path, tiny_qwen3_dir):
    from search.sealing import seal_folder

    path = tmp_path / "good.q3e.enc"
    seal_folder(tiny_qwen3_dir, path, get_keyring().model_key, model_id="test/tiny-qwen3", chunk_size=16 * 1024)
    return path


@pytest.fixture
def no_engine_afterwards():
    previous = engine_module.set_engine(None)
    yield
    opened = engine_module.set_engine(previous)
    if opened is not None:
        opened.close()


def damaged(path, how, tmp_path, tiny_qwen3_dir):
    from search.sealing import seal_folder

    data = bytearray(path.read_bytes())
    out = tmp_path / f"{how}.q3e.enc"
    if how == "tampered":
        data[len(data) // 2] ^= 0x01
    elif how == "truncated":
        data = data[: len(data) - 100]
    elif how == "not-a-bundle":
        data = bytearray(b"PK\x03\x04" + bytes(200))
    elif how == "wrong-key":
        seal_folder(tiny_qwen3_dir, out, bytes(32), model_id="test/tiny-qwen3", chunk_size=16 * 1024)
        return out
    elif how == "missing":
        return tmp_path / "nowhere.q3e.enc"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("how,reason", [
    ("tampered", "ChunkAuthenticationError"),
    ("truncated", "TruncatedError"),
    ("not-a-bundle", "NotABundleError"),
    ("wrong-key", "WrongKeyError"),
    ("missing", "FileNotFoundError"),
])
def test_a_model_that_cannot_be_opened_fails_closed_and_audited(db, settings, tmp_path, tiny_qwen3_dir,
                                                                sealed_with_process_key, no_engine_afterwards,
                                                                how, reason):
    settings.EMBED_MODEL_PATH = str(damaged(sealed_with_process_key, how, tmp_path, tiny_qwen3_dir))
    settings.EMBED_DEVICE = "cpu"
    open_configured_engine()  # raises nothing
    ready, why = engine_module.engine_status()
    assert not ready and why
    with pytest.raises(engine_module.EngineUnavailable):
        engine_module.get_engine()
    event = AuditEvent.objects.get(action="model.open")
    assert event.outcome == "failure" and event.detail["reason"] == reason
    assert get_keyring().model_key.hex() not in str(event.detail)


def test_the_intact_bundle_opens_and_is_audited(db, settings, sealed_with_process_key, no_engine_afterwards):
    settings.EMBED_MODEL_PATH = str(sealed_with_process_key)
    settings.EMBED_DEVICE = "cpu"
    open_configured_engine()
    assert engine_module.engine_status()[0]
    assert AuditEvent.objects.get(action="model.open").outcome == "success"


def test_an_audit_store_that_cannot_be_written_does_not_stop_the_worker(db, settings, tmp_path,
                                                                        no_engine_afterwards):
    settings.EMBED_MODEL_PATH = str(tmp_path / "nowhere.q3e.enc")
    with audit_writes_refused():
        open_configured_engine()  # raises nothing; the worker stays up, not ready
    assert not engine_module.engine_status()[0]
