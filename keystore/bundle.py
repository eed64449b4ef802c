"""The sealed model bundle: a whole model folder in one authenticated, encrypted file.

The byte layout is specified in ``docs/bundle-format.md``. In short: a public
header (magic, format version, key id, salt, chunk size, chunk count, plaintext
size, header MAC) followed by AES-256-GCM chunks in the STREAM pattern (nonce =
chunk counter ‖ last-chunk flag, the header as associated data). The plaintext
stream starts with the file table (names, offsets, sizes, model id,
sentence-transformers metadata), so only the format version, key id and sizes
are readable without the key.

Opening decrypts chunk by chunk straight into one preallocated buffer, so the
peak memory is the plaintext plus one ciphertext chunk, and there is exactly
one copy of the plaintext in the process. Because ``AESGCM.decrypt_into``
writes unverified plaintext before it checks the tag, every failure zeroes the
buffer before the error leaves this module.

Plain Python and ``cryptography`` only, so an auditor can review it alone.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime
import hashlib
import hmac
import json
import mmap
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterable, Mapping

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keystore.keys import KEY_LENGTH, key_id

MAGIC = b"Q3E-SEAL"
FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MAX_CHUNK_SIZE = 1 << 30
TAG_SIZE = 16
SALT_SIZE = 32
HEADER_MAC_SIZE = 32
FILE_ALIGNMENT = 64  # tensors viewed in place need aligned data (torch, SIMD loads)
TABLE_FORMAT = "q3e-table/1"

_HEAD = struct.Struct(">8sHB")  # magic, version, key id length
_SIZES = struct.Struct(">IQQ")  # chunk size, chunk count, plaintext size
_TABLE_LENGTH = struct.Struct(">Q")
_CHUNK_KEY_INFO = b"q3e-seal/v1/chunk-key"
_HEADER_MAC_INFO = b"q3e-seal/v1/header-mac"
_PUBLIC_FIELDS = ("format_version", "key_id", "chunk_size", "chunk_count", "plaintext_size")
# ISO 639-1: the codes a bundle may name as the languages its model reads.
ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el
en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it
iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt
my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl
sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo
za zh zu""".split())


class BundleError(Exception):
    """The bundle cannot be sealed, opened or verified; the message says why."""


class NotABundleError(BundleError):
    """The file does not start with the bundle magic."""


class UnsupportedVersionError(BundleError):
    """The bundle was written in a format version this code does not read."""


class KeyLengthError(BundleError, ValueError):
    """The key is not 32 bytes."""


class WrongKeyError(BundleError):
    """The supplied key is not the one the bundle was sealed with."""

    def __init__(self, bundle_key_id: str, supplied_key_id: str):
        self.bundle_key_id = bundle_key_id
        self.supplied_key_id = supplied_key_id
        super().__init__(
            f"wrong key: the bundle was sealed with key {bundle_key_id}, "
            f"the supplied key is {supplied_key_id}"
        )


class HeaderTamperedError(BundleError):
    """The public header does not match its MAC (salt, chunk size or sizes were changed)."""


class ChunkAuthenticationError(BundleError):
    """A chunk failed authentication: changed bytes, or a chunk dropped, repeated or moved."""

    def __init__(self, chunk: int, chunk_count: int):
        self.chunk = chunk
        self.chunk_count = chunk_count
        super().__init__(
            f"chunk {chunk} of {chunk_count} (numbered from 0) failed authentication: "
            f"its bytes were changed, or a chunk was dropped, repeated or moved at this position"
        )


class TruncatedError(BundleError):
    """The file ends before the last chunk does."""


class TrailingDataError(BundleError):
    """Bytes follow the last chunk."""


class LegacyFormatError(BundleError):
    """A legacy AES-CBC file cannot be decrypted (wrong key, damaged, or not that format)."""


@dataclass(frozen=True)
class PublicHeader:
    format_version: int
    key_id: str
    salt: bytes
    chunk_size: int
    chunk_count: int
    plaintext_size: int
    raw: bytes  # the serialized fields, bound as associated data to every chunk
    mac: bytes

    @property
    def size(self) -> int:
        return len(self.raw) + len(self.mac)

    @property
    def expected_file_size(self) -> int:
        return self.size + self.plaintext_size + TAG_SIZE * self.chunk_count

    def chunk_length(self, index: int) -> int:
        if index < self.chunk_count - 1:
            return self.chunk_size
        return self.plaintext_size - self.chunk_size * (self.chunk_count - 1)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _PUBLIC_FIELDS} | {"header_size": self.size}


@dataclass
class OpenedBundle:
    """A decrypted bundle: every file is a memoryview into one buffer, until ``wipe()``."""

    header: dict[str, Any]
    table: dict[str, Any]
    files: dict[str, memoryview]
    _buffer: Any = field(repr=False)

    @property
    def model_id(self) -> str | None:
        return self.table.get("model_id")

    @property
    def languages(self) -> tuple[str, ...]:
        """ISO 639-1 codes of the languages the model reads; empty when the sealer did not say."""
        return tuple(self.table.get("languages") or ())

    @property
    def relevance_floor(self) -> float | None:
        """The calibrated cosine under which a hit is a weak match; None when not calibrated."""
        return self.table.get("relevance_floor")

    def discard(self, name: str) -> None:
        """Zero one file's plaintext and drop its view, keeping the others.

        For a file the opener will not use (a backend's graph when the other
        backend runs): where the buffer is private anonymous memory, the whole
        pages inside the file also go back to the kernel, so the file stops
        costing memory (they read as zeros if touched again).
        """
        view = self.files.pop(name, None)
        if view is None or self._buffer is None or not view.nbytes:
            return
        _zero(view)
        if isinstance(self._buffer, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            start = _address(view) - _address(self._buffer)
            first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
            last = (start + view.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
            if last > first:
                self._buffer.madvise(mmap.MADV_DONTNEED, first, last - first)

    def wipe(self) -> None:
        """Zero the plaintext and drop the views; tensors made from them read zeros afterwards."""
        if self._buffer is not None:
            _zero(self._buffer)
            self._buffer = None
        self.files = {}

    def __enter__(self) -> "OpenedBundle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()


# --- keys -----------------------------------------------------------------


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LENGTH:
        length = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise KeyLengthError(f"the model key must be {KEY_LENGTH} bytes, got {length}")
    return bytes(key)


def _derive(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def _header_mac(key: bytes, raw: bytes, salt: bytes) -> bytes:
    return hmac.new(_derive(key, salt, _HEADER_MAC_INFO), raw, hashlib.sha256).digest()


def _nonce(index: int, last: bool) -> bytes:
    # 11-byte big-endian counter ‖ 1-byte last-chunk flag (the STREAM construction):
    # a chunk cannot be moved, and the stream cannot be cut at a chunk boundary.
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


# --- public header ----------------------------------------------------------


def _pack_header(kid: str, salt: bytes, chunk_size: int, chunk_count: int, plaintext_size: int) -> bytes:
    kid_bytes = kid.encode("ascii")
    return (
        _HEAD.pack(MAGIC, FORMAT_VERSION, len(kid_bytes))
        + kid_bytes
        + salt
        + _SIZES.pack(chunk_size, chunk_count, plaintext_size)
    )


def _read_header(handle: BinaryIO) -> PublicHeader:
    head = handle.read(_HEAD.size)
    if len(head) < len(MAGIC) or head[: len(MAGIC)] != MAGIC[: len(head)]:
        raise NotABundleError("not a sealed model bundle (bad magic bytes)")
    if len(head) < _HEAD.size:
        raise TruncatedError("the bundle ends inside its header")
    _, version, kid_length = _HEAD.unpack(head)
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"bundle format version {version} is not supported (this code reads version {FORMAT_VERSION})"
        )
    rest_length = kid_length + SALT_SIZE + _SIZES.size
    rest = handle.read(rest_length)
    mac = handle.read(HEADER_MAC_SIZE)
    if len(rest) < rest_length or len(mac) < HEADER_MAC_SIZE:
        raise TruncatedError("the bundle ends inside its header")
    try:
        kid = rest[:kid_length].decode("ascii")
    except UnicodeDecodeError:
        raise HeaderTamperedError("the bundle header is damaged (key id is not ASCII)") from None
    salt = rest[kid_length : kid_length + SALT_SIZE]
    chunk_size, chunk_count, plaintext_size = _SIZES.unpack(rest[kid_length + SALT_SIZE :])
    if not (
        0 < chunk_size <= MAX_CHUNK_SIZE
        and plaintext_size > 0
        and chunk_count == -(-plaintext_size // chunk_size)
    ):
        raise HeaderTamperedError("the bundle header is damaged (chunk size, chunk count and size disagree)")
    return PublicHeader(version, kid, salt, chunk_size, chunk_count, plaintext_size, head + rest, mac)


def _authenticate_header(handle: BinaryIO, key: bytes) -> PublicHeader:
    """Read the header and prove it is ours, before a single chunk is decrypted."""
    header = _read_header(handle)
    supplied = key_id(key)
    if not hmac.compare_digest(header.key_id, supplied):
        raise WrongKeyError(header.key_id, supplied)
    if not hmac.compare_digest(_header_mac(key, header.raw, header.salt), header.mac):
        raise HeaderTamperedError(
            "the bundle header was modified (its MAC does not match: salt, chunk size or sizes changed)"
        )
    return header


def inspect_bundle(path: str | os.PathLike) -> dict[str, Any]:
    """The public header, without a key (nothing here is verified)."""
    with open(path, "rb") as handle:
        header = _read_header(handle)
        actual = os.fstat(handle.fileno()).st_size
    return header.as_dict() | {"expected_file_size": header.expected_file_size, "file_size": actual}


# --- decryption -------------------------------------------------------------


def _read_exact(handle: BinaryIO, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = handle.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _decrypt_chunks(
    handle: BinaryIO, header: PublicHeader, key: bytes, target: Callable[[int], memoryview]
) -> None:
    """Authenticate every chunk in order, decrypting chunk i into ``target(i)``."""
    aead = AESGCM(_derive(key, header.salt, _CHUNK_KEY_INFO))
    record = bytearray(header.chunk_size + TAG_SIZE)
    record_view = memoryview(record)
    try:
        for index in range(header.chunk_count):
            length = header.chunk_length(index) + TAG_SIZE
            got = _read_exact(handle, record_view[:length])
            if got < length:
                where = "at a chunk boundary" if got == 0 else "in the middle of the chunk"
                raise TruncatedError(
                    f"the bundle is truncated: it ends {where} at chunk {index} of {header.chunk_count} "
                    f"(numbered from 0)"
                )
            last = index == header.chunk_count - 1
            try:
                aead.decrypt_into(_nonce(index, last), record_view[:length], header.raw, target(index))
            except Exception:  # InvalidTag; decrypt_into has already written unverified bytes
                raise ChunkAuthenticationError(index, header.chunk_count) from None
        extra = handle.read(1)
        if extra:
            actual = os.fstat(handle.fileno()).st_size
            raise TrailingDataError(
                f"{actual - header.expected_file_size} unexpected bytes follow the last chunk "
                f"(the bundle should be {header.expected_file_size} bytes, it is {actual})"
            )
    finally:
        _zero(record)


def private_memory(size: int) -> Any:
    """Page-aligned anonymous memory for plaintext, left out of core dumps.

    Unlike ``bytearray(size)`` it is not zero-filled up front, and huge pages
    (where the kernel allows them on request) cut the page faults of the first
    write; together they halve the time to open a bundle.
    """
    if not hasattr(mmap, "MAP_ANONYMOUS"):  # not Linux/BSD/macOS
        return bytearray(size)
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for advice in ("MADV_DONTDUMP", "MADV_HUGEPAGE"):
        if hasattr(mmap, advice):
            with contextlib.suppress(OSError):
                memory.madvise(getattr(mmap, advice))
    return memory


def _address(buffer: Any) -> int:
    """Where a writable, non-empty buffer's first byte lies in memory."""
    view = memoryview(buffer).cast("B")
    window = (ctypes.c_char * view.nbytes).from_buffer(view)
    try:
        return ctypes.addressof(window)
    finally:
        del window
        view.release()


def _zero(buffer: Any) -> None:
    view = memoryview(buffer).cast("B")
    if view.nbytes:
        # One memset instead of writing a zero copy the size of the model.
        window = (ctypes.c_char * view.nbytes).from_buffer(view)
        ctypes.memset(ctypes.addressof(window), 0, view.nbytes)
        del window
    view.release()


def open_bundle(
    path: str | os.PathLike, key: bytes, *, allocate: Callable[[int], Any] = private_memory
) -> OpenedBundle:
    """Authenticate and decrypt a bundle into one buffer; any failure leaves it zeroed.

    ``allocate(size)`` returns the writable buffer the plaintext goes into, for a
    caller that wants particular memory (page-locked memory for a GPU upload, or
    a test that checks the wiping).
    """
    key = _check_key(key)
    with open(path, "rb") as handle:
        header = _authenticate_header(handle, key)
        buffer = allocate(header.plaintext_size)
        try:
            view = memoryview(buffer).cast("B")
            if view.nbytes != header.plaintext_size:
                raise BundleError("allocate() returned a buffer of the wrong size")
            _decrypt_chunks(
                handle,
                header,
                key,
                lambda i: view[i * header.chunk_size : i * header.chunk_size + header.chunk_length(i)],
            )
            table, files = _parse_table(view)
        except BaseException:
            _zero(buffer)
            raise
    return OpenedBundle(header=header.as_dict(), table=table, files=files, _buffer=buffer)


def verify_bundle(path: str | os.PathLike, key: bytes) -> dict[str, Any]:
    """Authenticate every chunk without keeping any plaintext; returns the public header."""
    key = _check_key(key)
    with open(path, "rb") as handle:
        header = _authenticate_header(handle, key)
        scratch = bytearray(header.chunk_size)
        scratch_view = memoryview(scratch)
        try:
            _decrypt_chunks(handle, header, key, lambda i: scratch_view[: header.chunk_length(i)])
        finally:
            _zero(scratch)
    return header.as_dict()


def _parse_table(view: memoryview) -> tuple[dict[str, Any], dict[str, memoryview]]:
    # The table was authenticated with everything else, so a failure here means
    # it was sealed by something that does not follow the format.
    try:
        (length,) = _TABLE_LENGTH.unpack(view[: _TABLE_LENGTH.size])
        table = json.loads(bytes(view[_TABLE_LENGTH.size : _TABLE_LENGTH.size + length]))
        data_start = _align(_TABLE_LENGTH.size + length)
        files = {}
        for entry in table["files"]:
            start = data_start + int(entry["offset"])
            end = start + int(entry["size"])
            if end > view.nbytes:
                raise ValueError(f"{entry['name']} lies beyond the end of the plaintext")
            files[entry["name"]] = view[start:end]
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"the bundle's file table is malformed ({exc})") from None
    return table, files


# --- sealing ----------------------------------------------------------------


def _align(offset: int) -> int:
    return -(-offset // FILE_ALIGNMENT) * FILE_ALIGNMENT


def check_file_name(name: str) -> str:
    """A file's name in the bundle: a relative path with ``/`` separators; BundleError otherwise."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or "\\" in name:
        raise BundleError(f"file name {name!r} must be a relative path inside the model folder")
    return path.as_posix()


def _sources(files: Mapping[str, str | os.PathLike | bytes]) -> list[tuple[str, Path | bytes]]:
    """The files to seal, sorted by name: each a file on disk or bytes in memory."""
    if not isinstance(files, Mapping):
        raise TypeError("files must map each name in the bundle to a path or to bytes")
    entries: dict[str, Path | bytes] = {}
    for name, source in files.items():
        clean = check_file_name(name)
        if clean in entries:
            raise BundleError(f"file name {name!r} is given twice")
        entries[clean] = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source)
    if not entries:
        raise BundleError("there is nothing to seal: no files were given")
    return sorted(entries.items())


def check_languages(languages: Iterable[str] | None) -> list[str]:
    """Lower-cased, de-duplicated ISO 639-1 codes, in the given order; BundleError for any other code."""
    codes: list[str] = []
    for raw in languages or ():
        code = str(raw).strip().lower()
        if code not in ISO_639_1:
            raise BundleError(f"{raw!r} is not an ISO 639-1 language code (two letters, such as en or zh)")
        if code not in codes:
            codes.append(code)
    return codes


def check_relevance_floor(value: float | None) -> float | None:
    """A cosine score from 0 to 1, or None; BundleError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise BundleError(f"the relevance floor must be a number from 0 to 1, not {value!r}")
    return float(value)


class _ChunkWriter:
    """Turns a plaintext byte stream into sealed chunks, holding one chunk in memory."""

    def __init__(self, out: BinaryIO, aead: AESGCM, header: PublicHeader, progress: Callable | None):
        self.out, self.aead, self.header, self.progress = out, aead, header, progress
        self.plain = bytearray(header.chunk_size)
        self.sealed = bytearray(header.chunk_size + TAG_SIZE)
        self.fill = 0
        self.index = 0
        self.done = 0

    def write(self, data: bytes | memoryview) -> None:
        data = memoryview(data)
        while data.nbytes:
            take = min(len(self.plain) - self.fill, data.nbytes)
            self.plain[self.fill : self.fill + take] = data[:take]
            data = data[take:]
            self._advance(take)

    def write_zeros(self, count: int) -> None:
        self.write(bytes(count))

    def copy_file(self, path: Path, size: int) -> None:
        with open(path, "rb") as source:
            remaining = size
            plain_view = memoryview(self.plain)
            while remaining:
                take = min(len(self.plain) - self.fill, remaining)
                got = _read_exact(source, plain_view[self.fill : self.fill + take])
                if got < take:
                    raise BundleError(f"{path} shrank while it was being sealed")
                remaining -= take
                self._advance(take)
            if source.read(1):
                raise BundleError(f"{path} grew while it was being sealed")

    def _advance(self, count: int) -> None:
        self.fill += count
        if self.fill == self.header.chunk_length(self.index):
            self._seal_chunk()

    def _seal_chunk(self) -> None:
        last = self.index == self.header.chunk_count - 1
        out = memoryview(self.sealed)[: self.fill + TAG_SIZE]
        self.aead.encrypt_into(
            _nonce(self.index, last), memoryview(self.plain)[: self.fill], self.header.raw, out
        )
        self.out.write(out)
        self.done += self.fill
        self.index += 1
        self.fill = 0
        if self.progress is not None:
            self.progress(self.done, self.header.plaintext_size)

    def finish(self) -> None:
        if self.index != self.header.chunk_count or self.fill:
            raise BundleError("internal error: the plaintext did not fill the announced chunks")

    def wipe(self) -> None:
        _zero(self.plain)


def seal_bundle(
    files: Mapping[str, str | os.PathLike | bytes],
    out_path: str | os.PathLike,
    key: bytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    model_id: str | None = None,
    model_type: str | None = None,
    sentence_transformers: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    languages: Iterable[str] | None = None,
    relevance_floor: float | None = None,
) -> dict[str, Any]:
    """Seal ``files`` (each name in the bundle mapped to a file on disk or to bytes) into ``out_path``.

    Which files make up a model, and what ``model_id``, ``model_type`` and
    ``sentence_transformers`` say about it, is the sealer's to decide; this
    module records them in the sealed file table as given, so they are as
    private as the model's files. ``languages`` (ISO 639-1 codes) and
    ``relevance_floor`` (the cosine under which a hit counts as a weak match,
    calibrated on the model) are checked and recorded the same way.

    Bytes let a caller seal files it made in memory (weights converted from
    pickle to safetensors) so that no plaintext conversion touches the disk.
    ``progress(done_bytes, total_bytes)`` is called after every chunk. The
    bundle is written under a temporary name next to ``out_path`` and moved into
    place only when complete, so a failed seal leaves nothing behind.
    """
    key = _check_key(key)
    if not (0 < chunk_size <= MAX_CHUNK_SIZE):
        raise BundleError(f"chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes")
    codes = check_languages(languages)
    relevance_floor = check_relevance_floor(relevance_floor)
    entries = _sources(files)
    sources = dict(entries)
    sizes = {name: (src.stat().st_size if isinstance(src, Path) else len(src)) for name, src in entries}

    table_files, offset = [], 0
    for name, _ in entries:
        offset = _align(offset)
        table_files.append({"name": name, "offset": offset, "size": sizes[name]})
        offset += sizes[name]
    table = {
        "format": TABLE_FORMAT,
        "model_id": model_id,
        "model_type": model_type,
        "sealed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sentence_transformers": dict(sentence_transformers) if sentence_transformers is not None else None,
        "languages": codes,
        "relevance_floor": relevance_floor,
        "files": table_files,
    }
    table_bytes = json.dumps(table, ensure_ascii=False, separators=(",", ":")).encode()
    data_start = _align(_TABLE_LENGTH.size + len(table_bytes))
    plaintext_size = data_start + offset

    salt = os.urandom(SALT_SIZE)
    kid = key_id(key)
    chunk_count = -(-plaintext_size // chunk_size)
    raw = _pack_header(kid, salt, chunk_size, chunk_count, plaintext_size)
    header = PublicHeader(
        FORMAT_VERSION, kid, salt, chunk_size, chunk_count, plaintext_size, raw, _header_mac(key, raw, salt)
    )

    out_path = Path(out_path)
    fd, temp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(header.raw + header.mac)
            writer = _ChunkWriter(out, AESGCM(_derive(key, salt, _CHUNK_KEY_INFO)), header, progress)
            try:
                writer.write(_TABLE_LENGTH.pack(len(table_bytes)) + table_bytes)
                position = _TABLE_LENGTH.size + len(table_bytes)
                for entry in table_files:
                    start = data_start + entry["offset"]
                    writer.write_zeros(start - position)
                    source = sources[entry["name"]]
                    if isinstance(source, Path):
                        writer.copy_file(source, entry["size"])
                    else:
                        writer.write(source)
                    position = start + entry["size"]
                writer.finish()
            finally:
                writer.wipe()
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, out_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    return header.as_dict()


# --- legacy -----------------------------------------------------------------


def decrypt_legacy_cbc(data: bytes, key: bytes) -> bytes:
    """Decrypt the legacy format: AES-256-CBC, 16-byte IV prepended, PKCS7 padding.

    The legacy format has no integrity check: a wrong key or a damaged file can
    only be noticed through the padding, or later when the content is parsed.
    """
    key = _check_key(key)
    if len(data) < 32 or len(data) % 16:
        raise LegacyFormatError(
            f"not a legacy AES-CBC file: {len(data)} bytes is not an IV plus whole 16-byte blocks"
        )
    decryptor = Cipher(algorithms.AES(key), modes.CBC(data[:16])).decryptor()
    padded = decryptor.update(data[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise LegacyFormatError(
            "the legacy file does not decrypt to valid padding: wrong key, or the file is damaged"
        ) from None
