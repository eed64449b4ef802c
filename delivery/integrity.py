#!/usr/bin/env python3
"""Integrity of a sealed-search delivery: signed manifest, file hashes, key files.

Shipped in the archive as scripts/integrity.py and called by
scripts/verify-integrity.sh; `delivery/build.py` uses it to write and sign the
manifest. Standard library only, plus `cryptography` for Ed25519 when it is
importable (else `openssl pkeyutl`, OpenSSL 3, does the signature check).

    integrity.py manifest ROOT [--pubkey PEM] [--fingerprint HEX]
    integrity.py keys MODEL_KEY_FILE AUDIT_HMAC_KEY_FILE

Exit status 0 when everything checked is intact, 1 otherwise. Every problem is
printed on its own line, naming the file; a key's value is never printed.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MANIFEST = "MANIFEST.sha256"
SIGNATURE = "MANIFEST.sha256.sig"
PUBLIC_KEY = "release-signing-key.pub.pem"
# Files that cannot be in the manifest they sign.
NOT_IN_MANIFEST = {MANIFEST, SIGNATURE}
KEY_LENGTH = 32


# --- the manifest ------------------------------------------------------------

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def walk(root: Path) -> list[str]:
    """Every regular file under root, as sorted POSIX paths relative to it.
    A symbolic link or any other non-regular entry is reported as a file too,
    so that it cannot hide."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            found.append(Path(folder, name).relative_to(root).as_posix())
    return sorted(found)


def manifest_text(root: Path) -> str:
    """`sha256sum`-compatible lines ("HEX  path") for every file but the manifest and its signature."""
    lines = []
    for rel in walk(root):
        if rel in NOT_IN_MANIFEST:
            continue
        lines.append(f"{sha256_file(root / rel)}  {rel}\n")
    return "".join(lines)


def parse_manifest(text: str) -> tuple[dict[str, str], list[str]]:
    entries, problems = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest) or not rel:
            problems.append(f"MANIFEST: line {number} is malformed")
            continue
        if rel.startswith("/") or ".." in rel.split("/"):
            problems.append(f"MANIFEST: line {number} names a path outside the delivery: {rel}")
            continue
        entries[rel] = digest
    return entries, problems


def compare(root: Path, entries: dict[str, str]) -> list[str]:
    """One line per file that differs, is missing or is extra."""
    problems = []
    present = set(walk(root)) - NOT_IN_MANIFEST
    for rel in sorted(entries):
        path = root / rel
        if rel not in present:
            problems.append(f"MISSING  {rel}")
        elif path.is_symlink() or not path.is_file():
            problems.append(f"CHANGED  {rel} (not a regular file)")
        elif sha256_file(path) != entries[rel]:
            problems.append(f"CHANGED  {rel}")
    for rel in sorted(present - set(entries)):
        problems.append(f"EXTRA    {rel}")
    return problems


# --- Ed25519 -------------------------------------------------------------------

def public_key_raw(pem: bytes) -> bytes:
    """The 32 raw bytes of an Ed25519 public key in PEM (SubjectPublicKeyInfo)."""
    body = b"".join(line.strip() for line in pem.splitlines() if line and not line.startswith(b"-----"))
    der = base64.b64decode(body)
    # SubjectPublicKeyInfo for Ed25519 is a fixed 12-byte prefix + 32 bytes.
    prefix = bytes.fromhex("302a300506032b6570032100")
    if len(der) != 44 or not der.startswith(prefix):
        raise ValueError("not an Ed25519 public key in PEM")
    return der[len(prefix):]


def fingerprint(pem: bytes) -> str:
    """SHA-256 of the raw public key, hex: the release key's fingerprint."""
    return hashlib.sha256(public_key_raw(pem)).hexdigest()


def verify_signature(message: bytes, signature: bytes, pem: bytes) -> bool:
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return _verify_with_openssl(message, signature, pem)
    try:
        Ed25519PublicKey.from_public_bytes(public_key_raw(pem)).verify(signature, message)
        return True
    except InvalidSignature:
        return False


def _verify_with_openssl(message: bytes, signature: bytes, pem: bytes) -> bool:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("neither the Python package cryptography nor openssl is available to check the signature")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, data in (("msg", message), ("sig", signature), ("pub", pem)):
            paths[name] = os.path.join(tmp, name)
            with open(paths[name], "wb") as handle:
                handle.write(data)
        result = subprocess.run([openssl, "pkeyutl", "-verify", "-pubin", "-inkey", paths["pub"], "-rawin",
                                 "-in", paths["msg"], "-sigfile", paths["sig"]], capture_output=True)
        return result.returncode == 0


def sign(message: bytes, private_pem: bytes) -> tuple[bytes, bytes]:
    """(signature, public key PEM) for `message` with an Ed25519 private key in PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the release signing key is not an Ed25519 private key")
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.sign(message), public


def check_manifest(root: Path, pubkey: Path | None, expected_fingerprint: str | None) -> list[str]:
    problems = []
    manifest_path, signature_path = root / MANIFEST, root / SIGNATURE
    pem_path = pubkey or root / PUBLIC_KEY
    for path in (manifest_path, signature_path, pem_path):
        if not path.is_file():
            problems.append(f"MISSING  {path.name} (cannot check the delivery without it)")
    if problems:
        return problems
    message = manifest_path.read_bytes()
    pem = pem_path.read_bytes()
    try:
        found = fingerprint(pem)
    except (ValueError, binascii.Error):
        return [f"BAD KEY  {pem_path}: not an Ed25519 public key in PEM"]
    print(f"release key fingerprint: {found}")
    if expected_fingerprint:
        if found != expected_fingerprint.strip().lower().replace(":", ""):
            problems.append(f"BAD KEY  {pem_path.name}: fingerprint {found} is not the expected {expected_fingerprint}")
    elif pubkey is None:
        print("NOTE: compare that fingerprint with the one in your release letter "
              "(or pass --fingerprint / RELEASE_KEY_FINGERPRINT)")
    try:
        signature = base64.b64decode(signature_path.read_bytes().strip(), validate=True)
        good = verify_signature(message, signature, pem)
    except (ValueError, binascii.Error):
        good = False
    except RuntimeError as exc:
        return problems + [f"UNCHECKED  {SIGNATURE}: {exc}"]
    if not good:
        problems.append(f"BAD SIGNATURE  {MANIFEST} is not signed by the release key")
    try:
        entries, malformed = parse_manifest(message.decode("utf-8"))
    except UnicodeDecodeError:
        return problems + [f"CHANGED  {MANIFEST} (not UTF-8)"]
    problems += malformed
    problems += compare(root, entries)
    if not problems:
        print(f"manifest: signature good, {len(entries)} files match, nothing missing, nothing extra")
    return problems


# --- customer keys ---------------------------------------------------------------

def decode_key(text: str) -> bytes:
    """A 32-byte key from 64 hex characters or standard base64 (as the portal reads it)."""
    text = text.strip()
    if len(text) == 2 * KEY_LENGTH and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    raw = base64.b64decode(text, validate=True)
    if len(raw) != KEY_LENGTH:
        raise ValueError(f"decodes to {len(raw)} bytes, not {KEY_LENGTH}")
    return raw


def check_keys(model_file: Path, audit_file: Path) -> list[str]:
    problems, keys = [], {}
    for label, path in (("EMBED_MODEL_KEY_FILE", model_file), ("AUDIT_HMAC_KEY_FILE", audit_file)):
        try:
            keys[label] = decode_key(path.read_text(encoding="ascii"))
        except OSError as exc:
            problems.append(f"KEY  {label}={path}: cannot be read ({exc.__class__.__name__})")
            continue
        except (ValueError, binascii.Error, UnicodeDecodeError):
            problems.append(f"KEY  {label}={path}: not 64 hex characters nor standard base64 of 32 bytes "
                            "(make one with: openssl rand -hex 32)")
            continue
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            print(f"WARNING: {label}={path} is readable by group or others (mode {mode:o}); chmod 600 it")
        # The portal's public key id (keystore.keys.key_id), never the key.
        print(f"{label}: 32-byte key, key id k_{hashlib.sha256(b'portal-key-id' + bytes(1) + keys[label]).hexdigest()[:16]}")
    if len(keys) == 2 and keys["EMBED_MODEL_KEY_FILE"] == keys["AUDIT_HMAC_KEY_FILE"]:
        problems.append("KEY  EMBED_MODEL_KEY_FILE and AUDIT_HMAC_KEY_FILE hold the same key; they must be independent")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("manifest", help="check the signature and every file's hash")
    m.add_argument("root", type=Path)
    m.add_argument("--pubkey", type=Path, help="release public key (PEM) obtained apart from the archive")
    m.add_argument("--fingerprint", default=os.environ.get("RELEASE_KEY_FINGERPRINT") or None,
                   help="expected SHA-256 fingerprint of the release key")
    w = sub.add_parser("write", help="(build) write and sign the manifest")
    w.add_argument("root", type=Path)
    w.add_argument("--signing-key", type=Path, required=True)
    k = sub.add_parser("keys", help="check the two key files")
    k.add_argument("model_key_file", type=Path)
    k.add_argument("audit_key_file", type=Path)
    f = sub.add_parser("fingerprint", help="print a public key's fingerprint")
    f.add_argument("pubkey", type=Path)
    args = parser.parse_args(argv)

    if args.command == "write":
        write_signed_manifest(args.root, args.signing_key.read_bytes())
        return 0
    if args.command == "fingerprint":
        print(fingerprint(args.pubkey.read_bytes()))
        return 0
    if args.command == "manifest":
        problems = check_manifest(args.root, args.pubkey, args.fingerprint)
    else:
        problems = check_keys(args.model_key_file, args.audit_key_file)
    for line in problems:
        print(line)
    return 1 if problems else 0


def write_signed_manifest(root: Path, private_pem: bytes) -> str:
    """Write the public key, MANIFEST.sha256 and its signature; return the fingerprint."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem, password=None)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    (root / PUBLIC_KEY).write_bytes(public)
    text = manifest_text(root).encode("utf-8")
    (root / MANIFEST).write_bytes(text)
    signature, _ = sign(text, private_pem)
    (root / SIGNATURE).write_bytes(base64.b64encode(signature) + b"\n")
    return fingerprint(public)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
