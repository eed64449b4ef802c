"""Digital envelopes: a file sealed to one recipient's X25519 public key with
HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
AES-128-GCM), single-shot.

Envelope file layout (docs/audit-export-format.md):

    MAGIC (b"PORTAL-ENVELOPE-1\\n")
    header: one line of JSON + b"\\n"  {"suite": ..., "recipient": <base64 public key>, "content": ...}
    rest:   enc || ciphertext, as `Suite.encrypt` returns it

The whole header (magic included) is the HPKE ``info``, so changing it makes
opening fail. Only the holder of the recipient's private key can open it.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

MAGIC = b"PORTAL-ENVELOPE-1\n"
SUITE_NAME = "HPKE-base/DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-128-GCM"
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_128_GCM)


class EnvelopeError(Exception):
    """The envelope or a key is malformed, or the key cannot open it."""


def generate_recipient_key(path: Path) -> X25519PrivateKey:
    """A new X25519 private key as PKCS#8 PEM, mode 0600, never overwriting."""
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def recipient_public_text(public_key: X25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_recipient_public_key(text: str) -> X25519PublicKey:
    """A recipient key given as base64 of the 32 raw bytes, or as a PEM public key."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, X25519PublicKey):
                raise EnvelopeError("the recipient key is not an X25519 public key")
            return key
        return X25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except EnvelopeError:
        raise
    except (ValueError, TypeError):
        raise EnvelopeError("the recipient key is neither base64 of 32 bytes nor an X25519 PEM public key") from None


def load_recipient_private_key(pem: bytes) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise EnvelopeError("the private key file is not an unencrypted PEM private key") from None
    if not isinstance(key, X25519PrivateKey):
        raise EnvelopeError("the private key is not an X25519 key")
    return key


def is_envelope(data: bytes) -> bool:
    return data.startswith(MAGIC)


def seal(plaintext: bytes, recipient: X25519PublicKey, *, content: str) -> bytes:
    header = MAGIC + json.dumps(
        {"suite": SUITE_NAME, "recipient": recipient_public_text(recipient), "content": content},
        sort_keys=True, separators=(",", ":")).encode() + b"\n"
    return header + _SUITE.encrypt(plaintext, recipient, info=header)


def split(data: bytes) -> tuple[bytes, dict, bytes]:
    """(header bytes, header fields, enc || ciphertext)."""
    if not data.startswith(MAGIC):
        raise EnvelopeError("not an envelope (magic missing)")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise EnvelopeError("envelope header is truncated")
    header = data[:end + 1]
    try:
        fields = json.loads(data[len(MAGIC):end])
    except ValueError:
        raise EnvelopeError("envelope header is not JSON") from None
    if fields.get("suite") != SUITE_NAME:
        raise EnvelopeError(f"unsupported envelope suite {fields.get('suite')!r}")
    return header, fields, data[end + 1:]


def open_envelope(data: bytes, private_key: X25519PrivateKey) -> bytes:
    header, fields, sealed = split(data)
    mine = recipient_public_text(private_key.public_key())
    if fields.get("recipient") != mine:
        raise EnvelopeError(f"sealed to recipient {fields.get('recipient')}, not to this key ({mine})")
    try:
        return _SUITE.decrypt(sealed, private_key, info=header)
    except InvalidTag:
        raise EnvelopeError("the envelope does not open with this key (altered, or another recipient)") from None
