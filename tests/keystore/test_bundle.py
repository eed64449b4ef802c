"""The sealed bundle: round trip, what is public, and every way a bundle can be damaged."""
import ctypes
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from keystore.bundle import (
    TAG_SIZE,
    BundleError,
    ChunkAuthenticationError,
    HeaderTamperedError,
    KeyLengthError,
    LegacyFormatError,
    NotABundleError,
    TrailingDataError,
    TruncatedError,
    UnsupportedVersionError,
    WrongKeyError,
    decrypt_legacy_cbc,
    inspect_bundle,
    open_bundle,
    seal_bundle,
    verify_bundle,
)
from keystore.keys import key_id
from tests.keystore.conftest import SECRET_MARKERS

CHUNK = 512
ST_METADATA = {"modules": [{"path": "1_Pooling", "type": "Pooling"}], "config": None}


@pytest.fixture
def sealed(tmp_path, model_files, key):
    path = tmp_path / "model.q3e.enc"
    seal_bundle(model_files, path, key, chunk_size=CHUNK, model_id="sealed-model-id",
                model_type="acme-secret-architecture", sentence_transformers=ST_METADATA)
    return path


def layout(path):
    header = inspect_bundle(path)
    start = header["header_size"]
    records = []
    for i in range(header["chunk_count"]):
        length = CHUNK if i < header["chunk_count"] - 1 else header["plaintext_size"] - CHUNK * i
        records.append((start, length + TAG_SIZE))
        start += length + TAG_SIZE
    return header, records


def address(buffer):
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def flip(path, at, bits=0x01):
    data = bytearray(Path(path).read_bytes())
    data[at] ^= bits
    Path(path).write_bytes(bytes(data))


def rewrite(path, mutate):
    data = bytearray(Path(path).read_bytes())
    Path(path).write_bytes(bytes(mutate(data)))


def assert_fails_wiped(path, key, allocator, error, **match):
    with pytest.raises(error) as caught:
        open_bundle(path, key, allocate=allocator)
    for name, value in match.items():
        assert getattr(caught.value, name) == value
    for buffer in allocator.buffers:
        assert not any(buffer), "plaintext left in the buffer after a failure"
    with pytest.raises(error):
        verify_bundle(path, key)
    return caught.value


def test_round_trip_gives_back_every_file_byte_for_byte(sealed, model_files, key):
    with open_bundle(sealed, key) as bundle:
        expected = {name: path.read_bytes() for name, path in model_files.items()}
        assert {name: bytes(view) for name, view in bundle.files.items()} == expected


def test_the_table_records_what_the_sealer_says_about_the_model(sealed, key):
    with open_bundle(sealed, key) as bundle:
        assert bundle.model_id == "sealed-model-id"
        assert bundle.table["model_type"] == "acme-secret-architecture"
        assert bundle.table["sentence_transformers"] == ST_METADATA


def test_all_files_are_views_into_one_buffer_and_wipe_zeroes_it(sealed, key, allocator):
    bundle = open_bundle(sealed, key, allocate=allocator)
    (buffer,) = allocator.buffers
    assert all(view.obj is buffer for view in bundle.files.values())
    assert any(buffer)
    bundle.wipe()
    assert not any(buffer)
    assert bundle.files == {}


def test_files_from_memory_and_from_disk_seal_alike(tmp_path, model_files, key):
    out = tmp_path / "converted.q3e.enc"
    seal_bundle({**model_files, "model.safetensors": b"converted"}, out, key)
    with open_bundle(out, key) as bundle:
        assert bytes(bundle.files["model.safetensors"]) == b"converted"
        assert bytes(bundle.files["1_Pooling/config.json"]) == model_files["1_Pooling/config.json"].read_bytes()
        assert [entry["name"] for entry in bundle.table["files"]] == sorted(model_files)


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside", "a/../../b", "dir\\file", ""])
def test_file_names_must_be_relative_paths_inside_the_model(tmp_path, key, name):
    with pytest.raises(BundleError, match="relative path"):
        seal_bundle({name: b"x"}, tmp_path / "bad.enc", key)
    assert list(tmp_path.iterdir()) == []


def test_nothing_to_seal_is_refused(tmp_path, key):
    with pytest.raises(BundleError, match="nothing to seal"):
        seal_bundle({}, tmp_path / "empty.enc", key)


def test_files_start_64_byte_aligned_in_the_buffer(sealed, key, allocator):
    with open_bundle(sealed, key, allocate=allocator) as bundle:
        base = address(allocator.buffers[0])
        assert all((address(view) - base) % 64 == 0 for view in bundle.files.values())


def test_public_header_holds_only_version_key_id_and_sizes(sealed, key):
    header = inspect_bundle(sealed)
    assert set(header) == {
        "format_version", "key_id", "chunk_size", "chunk_count", "plaintext_size",
        "header_size", "expected_file_size", "file_size",
    }  # fmt: skip
    assert header["key_id"] == key_id(key)
    assert header["format_version"] == 1
    assert header["file_size"] == header["expected_file_size"] == sealed.stat().st_size
    raw = sealed.read_bytes()
    for marker in SECRET_MARKERS:
        assert marker.encode() not in raw, f"{marker!r} is readable in the sealed file"


def test_every_seal_uses_a_fresh_salt(tmp_path, model_files, key):
    first, second = tmp_path / "a.enc", tmp_path / "b.enc"
    seal_bundle(model_files, first, key)
    seal_bundle(model_files, second, key)
    assert first.read_bytes()[200:400] != second.read_bytes()[200:400]


def test_verify_accepts_an_intact_bundle(sealed, key):
    assert verify_bundle(sealed, key)["chunk_count"] == inspect_bundle(sealed)["chunk_count"] > 5


def test_wrong_key_fails_before_any_decryption_and_names_both_ids(sealed, key, allocator):
    other = os.urandom(32)
    with pytest.raises(WrongKeyError) as caught:
        open_bundle(sealed, other, allocate=allocator)
    assert key_id(key) in str(caught.value) and key_id(other) in str(caught.value)
    assert allocator.buffers == [], "a buffer was allocated, so decryption had started"
    with pytest.raises(WrongKeyError):
        verify_bundle(sealed, other)


@pytest.mark.parametrize("bad_key", [b"", os.urandom(16), os.urandom(33), "0" * 64])
def test_key_of_wrong_length_is_refused(sealed, tmp_path, model_files, bad_key):
    with pytest.raises(KeyLengthError, match="32 bytes"):
        open_bundle(sealed, bad_key)
    with pytest.raises(KeyLengthError):
        verify_bundle(sealed, bad_key)
    with pytest.raises(KeyLengthError):
        seal_bundle(model_files, tmp_path / "x.enc", bad_key)


def test_bad_magic(sealed, key, allocator):
    rewrite(sealed, lambda d: b"PK\x03\x04" + d[4:])
    assert_fails_wiped(sealed, key, allocator, NotABundleError)
    with pytest.raises(NotABundleError):
        inspect_bundle(sealed)


def test_unsupported_version(sealed, key, allocator):
    flip(sealed, 9, 0x06)  # version 1 -> 7
    error = assert_fails_wiped(sealed, key, allocator, UnsupportedVersionError)
    assert "version 7" in str(error)


@pytest.mark.parametrize("offset_from_salt", [0, 31, 32 + 2, 32 + 4 + 7, 32 + 12 + 7], ids=[
    "salt-first", "salt-last", "chunk-size", "chunk-count", "plaintext-size"])  # fmt: skip
def test_header_tampering_is_detected_before_decryption(sealed, key, allocator, offset_from_salt):
    flip(sealed, 11 + len(key_id(key)) + offset_from_salt)
    assert_fails_wiped(sealed, key, allocator, HeaderTamperedError)
    assert allocator.buffers == []


def test_header_mac_tampering_is_detected(sealed, key, allocator):
    flip(sealed, inspect_bundle(sealed)["header_size"] - 1, 0x80)
    assert_fails_wiped(sealed, key, allocator, HeaderTamperedError)


@pytest.mark.parametrize("where", ["ciphertext", "tag"])
def test_flipped_byte_names_the_chunk(sealed, key, allocator, where):
    _, records = layout(sealed)
    start, length = records[3]
    flip(sealed, start + 10 if where == "ciphertext" else start + length - 1)
    error = assert_fails_wiped(sealed, key, allocator, ChunkAuthenticationError, chunk=3)
    assert "chunk 3 of" in str(error)


def test_flipped_byte_in_last_chunk_wipes_everything_decrypted_before(sealed, key, allocator):
    _, records = layout(sealed)
    flip(sealed, records[-1][0], 0xFF)
    assert_fails_wiped(sealed, key, allocator, ChunkAuthenticationError, chunk=len(records) - 1)


def test_dropped_chunk_fails_at_its_position(sealed, key, allocator):
    _, records = layout(sealed)
    start, length = records[2]
    rewrite(sealed, lambda d: d[:start] + d[start + length :])
    assert_fails_wiped(sealed, key, allocator, ChunkAuthenticationError, chunk=2)


def test_repeated_chunk_fails_at_the_copy(sealed, key, allocator):
    _, records = layout(sealed)
    start, length = records[2]
    rewrite(sealed, lambda d: d[: start + length] + d[start : start + length] + d[start + length :])
    assert_fails_wiped(sealed, key, allocator, ChunkAuthenticationError, chunk=3)


def test_swapped_chunks_fail_at_the_first_moved_one(sealed, key, allocator):
    _, records = layout(sealed)
    (a, n), (b, _) = records[1], records[2]
    rewrite(sealed, lambda d: d[:a] + d[b : b + n] + d[a : a + n] + d[b + n :])
    assert_fails_wiped(sealed, key, allocator, ChunkAuthenticationError, chunk=1)


def test_last_chunk_cut_off_at_a_boundary_is_truncation(sealed, key, allocator):
    _, records = layout(sealed)
    start, _ = records[-1]
    rewrite(sealed, lambda d: d[:start])
    error = assert_fails_wiped(sealed, key, allocator, TruncatedError)
    assert "chunk boundary" in str(error) and f"chunk {len(records) - 1} of" in str(error)


def test_cut_inside_a_chunk_is_truncation(sealed, key, allocator):
    _, records = layout(sealed)
    start, _ = records[4]
    rewrite(sealed, lambda d: d[: start + 100])
    error = assert_fails_wiped(sealed, key, allocator, TruncatedError)
    assert "middle of the chunk" in str(error) and "chunk 4 of" in str(error)


def test_cut_inside_the_header_is_truncation(sealed, key, allocator):
    rewrite(sealed, lambda d: d[:40])
    assert_fails_wiped(sealed, key, allocator, TruncatedError)


def test_appended_bytes_are_refused(sealed, key, allocator):
    rewrite(sealed, lambda d: d + b"\x00" * 3)
    error = assert_fails_wiped(sealed, key, allocator, TrailingDataError)
    assert "3 unexpected bytes" in str(error)


def test_an_appended_copy_of_the_last_chunk_is_refused(sealed, key, allocator):
    _, records = layout(sealed)
    start, length = records[-1]
    rewrite(sealed, lambda d: d + d[start : start + length])
    assert_fails_wiped(sealed, key, allocator, TrailingDataError)


def test_every_damage_has_its_own_error_class():
    classes = [
        NotABundleError, UnsupportedVersionError, KeyLengthError, WrongKeyError,
        HeaderTamperedError, ChunkAuthenticationError, TruncatedError, TrailingDataError,
    ]  # fmt: skip
    assert len(set(classes)) == len(classes)
    assert all(issubclass(cls, BundleError) for cls in classes)


def test_a_failed_seal_leaves_nothing_behind(tmp_path, model_files, key):
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def fail_halfway(done, total):
        if done > total // 2:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        seal_bundle(model_files, out_dir / "model.q3e.enc", key, chunk_size=CHUNK, progress=fail_halfway)
    assert list(out_dir.iterdir()) == []


def test_progress_reaches_the_plaintext_size(tmp_path, model_files, key):
    seen = []
    header = seal_bundle(
        model_files, tmp_path / "m.enc", key, chunk_size=CHUNK, progress=lambda done, total: seen.append((done, total))
    )
    assert seen[-1] == (header["plaintext_size"], header["plaintext_size"])
    assert len(seen) == header["chunk_count"]


def test_legacy_cbc_round_trip():
    key, iv = bytes(range(32)), bytes(range(16, 32))
    content = b"torch.save'd state dict bytes" * 10
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    data = iv + encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
    assert decrypt_legacy_cbc(data, key) == content
    with pytest.raises(LegacyFormatError, match="wrong key"):
        decrypt_legacy_cbc(data, bytes(32))
    with pytest.raises(LegacyFormatError, match="whole 16-byte blocks"):
        decrypt_legacy_cbc(data[:-3], key)


def test_languages_and_relevance_floor_round_trip_sealed_and_not_public(tmp_path, model_files, key):
    path = tmp_path / "langs.q3e.enc"
    seal_bundle(model_files, path, key, chunk_size=CHUNK, languages=["en", "ZH", "en"], relevance_floor=0.25)
    with open_bundle(path, key) as bundle:
        assert bundle.languages == ("en", "zh")
        assert bundle.relevance_floor == 0.25
    public = inspect_bundle(path)
    assert "languages" not in public and "relevance_floor" not in public
    raw = path.read_bytes()
    assert b"languages" not in raw and b"relevance_floor" not in raw


def test_a_bundle_without_languages_reads_as_not_stated(sealed, key):
    with open_bundle(sealed, key) as bundle:
        assert bundle.languages == () and bundle.relevance_floor is None


@pytest.mark.parametrize("languages,floor,message", [
    (["english"], None, "'english' is not an ISO 639-1 language code"),
    (["xx"], None, "'xx' is not an ISO 639-1"),
    (["en"], 1.5, "relevance floor must be a number from 0 to 1"),
    (["en"], -0.1, "relevance floor must be a number from 0 to 1"),
    (["en"], True, "relevance floor must be a number from 0 to 1"),
])
def test_sealing_refuses_bad_languages_and_floors_and_writes_nothing(tmp_path, model_files, key, languages, floor,
                                                                      message):
    with pytest.raises(BundleError, match=message):
        seal_bundle(model_files, tmp_path / "bad.enc", key, languages=languages, relevance_floor=floor)
    assert list(tmp_path.glob("bad.enc*")) == []


def test_discard_zeroes_one_file_and_gives_its_pages_back(tmp_path, key):
    big = os.urandom(5 * 4096 + 100)
    path = tmp_path / "two-graphs.q3e.enc"
    seal_bundle({"a.bin": b"kept-before" * 50, "graph.onnx": big, "z.bin": b"kept-after" * 50}, path, key)
    with open_bundle(path, key) as bundle:  # private anonymous memory, the engine's default
        graph = bundle.files["graph.onnx"]  # a view the test keeps, to read the memory afterwards
        bundle.discard("graph.onnx")
        assert "graph.onnx" not in bundle.files
        assert not any(graph)
        assert bytes(bundle.files["a.bin"]) == b"kept-before" * 50
        assert bytes(bundle.files["z.bin"]) == b"kept-after" * 50
        bundle.discard("graph.onnx")  # twice, or a file the bundle never had: nothing happens
        bundle.discard("absent")
