"""The delivery's integrity helper, audit-user script and build checks, on a
small tree (fast; the whole archive's round trip is tests/test_delivery.py)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"delivery_{name}", ROOT / "delivery" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


integrity = load("integrity")


def private_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption())


@pytest.fixture
def signed_tree(tmp_path):
    root = tmp_path / "delivery"
    (root / "wheelhouse").mkdir(parents=True)
    (root / "wheelhouse" / "a-1.0-py3-none-any.whl").write_bytes(os.urandom(2048))
    (root / "config").mkdir()
    (root / "config" / "audit-policy.json").write_text('{"retention_days": 365}\n')
    (root / "README-delivery.md").write_text("# hello\n")
    fingerprint = integrity.write_signed_manifest(root, private_pem())
    return root, fingerprint


def check(root, *args):
    result = subprocess.run([sys.executable, ROOT / "delivery" / "integrity.py", "manifest", root, *args],
                            capture_output=True, text=True)
    return result.returncode, result.stdout


def test_an_intact_tree_passes_and_prints_the_fingerprint(signed_tree):
    root, fingerprint = signed_tree
    code, out = check(root, "--fingerprint", fingerprint)
    assert code == 0, out
    assert fingerprint in out and "nothing missing, nothing extra" in out


def test_each_changed_missing_and_extra_file_is_named(signed_tree):
    root, fingerprint = signed_tree
    policy = root / "config" / "audit-policy.json"
    policy.write_text(policy.read_text().replace("365", "366"))
    (root / "README-delivery.md").unlink()
    (root / "wheelhouse" / "evil-1.0-py3-none-any.whl").write_bytes(b"x")
    code, out = check(root, "--fingerprint", fingerprint)
    assert code == 1
    assert "CHANGED  config/audit-policy.json" in out
    assert "MISSING  README-delivery.md" in out
    assert "EXTRA    wheelhouse/evil-1.0-py3-none-any.whl" in out


def test_a_rewritten_manifest_fails_its_signature(signed_tree):
    root, fingerprint = signed_tree
    manifest = root / integrity.MANIFEST
    (root / "config" / "audit-policy.json").write_text("{}\n")
    manifest.write_text(integrity.manifest_text(root))  # an attacker re-hashes, cannot re-sign
    code, out = check(root, "--fingerprint", fingerprint)
    assert code == 1 and "BAD SIGNATURE" in out


def test_a_delivery_resigned_with_another_key_fails_the_pinned_fingerprint(signed_tree):
    root, fingerprint = signed_tree
    integrity.write_signed_manifest(root, private_pem())
    assert check(root)[0] == 0  # self-consistent ...
    code, out = check(root, "--fingerprint", fingerprint)  # ... but not the vendor's key
    assert code == 1 and "BAD KEY" in out


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_openssl_checks_the_signature_without_cryptography(signed_tree):
    root, _ = signed_tree
    message = (root / integrity.MANIFEST).read_bytes()
    import base64

    signature = base64.b64decode((root / integrity.SIGNATURE).read_bytes())
    pem = (root / integrity.PUBLIC_KEY).read_bytes()
    assert integrity._verify_with_openssl(message, signature, pem)
    assert not integrity._verify_with_openssl(message + b" ", signature, pem)


def test_key_files_format_and_independence(tmp_path):
    good_a, good_b = os.urandom(32), os.urandom(32)
    a, b, short = tmp_path / "a", tmp_path / "b", tmp_path / "short"
    a.write_text(good_a.hex() + "\n")
    b.write_text(__import__("base64").b64encode(good_b).decode())
    short.write_text("abcd" * 8)
    for path in (a, b, short):
        os.chmod(path, 0o600)
    assert integrity.check_keys(a, b) == []
    same = integrity.check_keys(a, a)
    assert len(same) == 1 and "same key" in same[0]
    bad = integrity.check_keys(short, b)
    assert len(bad) == 1 and "EMBED_MODEL_KEY_FILE" in bad[0]
    assert all(good_a.hex() not in line for line in same + bad)  # never echoes a key


def test_the_build_names_a_missing_delivery_file(monkeypatch):
    build = load("build")
    monkeypatch.setattr(build, "REQUIRED", ["config/audit-policy.json", "deploy/no-such-unit-*.service"])
    monkeypatch.delenv("DELIVERY_ALLOW_MISSING", raising=False)
    with pytest.raises(build.BuildError, match=r"deploy/no-such-unit-\*\.service"):
        build.collect_listed_files()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd")
def test_setup_audit_user_is_idempotent_and_keeps_the_mirror_private(tmp_path):
    user = "ss-audit-test"
    folder = tmp_path / "audit"
    script = ROOT / "delivery" / "setup-audit-user.sh"
    try:
        for _ in range(2):
            result = subprocess.run(["sh", script, "--user", user, "--dir", folder, "--home", tmp_path / "home"],
                                    capture_output=True, text=True)
            assert result.returncode == 0, result.stdout + result.stderr
            (folder / "audit.jsonl").touch()
            os.chmod(folder / "audit.jsonl", 0o644)  # widened by hand: the next run narrows it again
        result = subprocess.run(["sh", script, "--user", user, "--dir", folder, "--home", tmp_path / "home"],
                                capture_output=True, text=True)
        assert result.returncode == 0 and f"user {user} exists" in result.stdout
        import pwd

        uid = pwd.getpwnam(user).pw_uid
        assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == uid
        assert (folder / "audit.jsonl").stat().st_mode & 0o777 == 0o600
        assert (folder / "audit.jsonl").stat().st_uid == uid
        assert pwd.getpwnam(user).pw_shell.endswith("nologin")
    finally:
        subprocess.run(["userdel", user], capture_output=True)


def test_verify_integrity_checks_pinned_image_digests_where_docker_is(tmp_path):
    """Containers cannot run here: a stand-in `docker` answers `image inspect`."""
    digest = "ab" * 32
    root = tmp_path / "delivery"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "delivery" / "integrity.py", root / "scripts" / "integrity.py")
    shutil.copy(ROOT / "delivery" / "verify-integrity.sh", root / "scripts" / "verify-integrity.sh")
    (root / "docker-compose.yml").write_text(
        f'services:\n  db:\n    image: "pgvector/pgvector:0.8.0-pg17@sha256:{digest}"\n'
        f'  other:\n    image: example/other@sha256:{"cd" * 32}\n')
    integrity.write_signed_manifest(root, private_pem())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f'#!/bin/sh\ncase "$*" in *pgvector*) echo "pgvector/pgvector@sha256:{digest}";; '
                                    '*) exit 1;; esac\n')
    os.chmod(bin_dir / "docker", 0o755)
    result = subprocess.run(["sh", root / "scripts" / "verify-integrity.sh"], capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert f"image pgvector/pgvector:0.8.0-pg17@sha256:{digest} present" in result.stdout, result.stdout
    assert f"FAILED: image example/other@sha256:{'cd' * 32} is not loaded, or its digest differs" in result.stdout
    assert result.returncode == 1


SPEC_VARIABLES = [  # SPEC §3 and §10
    "EMBED_MODEL_PATH", "EMBED_MODEL_KEY", "AUDIT_HMAC_KEY", "AUDIT_HMAC_OLD_KEYS", "AUDIT_SIGNING_KEY_FILE",
    "AUDIT_QUERY_MODE", "AUDIT_RETENTION_DAYS", "AUDIT_JSONL_PATH", "EMBED_DEVICE", "DATABASE_URL",
    "TRUSTED_PROXIES", "DJANGO_DEBUG", "DJANGO_ALLOWED_HOSTS", "DJANGO_CSRF_TRUSTED_ORIGINS",
    "DJANGO_HSTS_SECONDS", "DJANGO_SECURE_COOKIES", "AUDIT_POLICY_FILE", "DJANGO_SECRET_KEY",
]


# Read by the code, but only on a developer's machine or in the test suite.
DEVELOPMENT_ONLY = {"PORTAL_DOTENV", "PORTAL_TEST_DB", "DEMO_PASSWORD"}


def variables_the_code_reads() -> set[str]:
    """Every environment variable the portal's own code reads by name."""
    import re

    read = re.compile(r"""(?:environ(?:\.get)?\(|environ\[|getenv\(|_env_[a-z]+\(|env(?:\.[a-z]+)?\()\s*["']([A-Z][A-Z0-9_]+)["']""")
    names = set()
    for package in ("portal", "search", "audit", "keystore"):
        for path in (ROOT / package).rglob("*.py"):
            names.update(read.findall(path.read_text()))
    return names


def test_the_code_reads_variables_and_the_scan_finds_them():
    names = variables_the_code_reads()
    assert {"DATABASE_URL", "KB_MAX_UPLOAD_BYTES", "PROMETHEUS_MULTIPROC_DIR", "PORTAL_DOTENV"} <= names


def test_env_example_explains_every_variable_and_holds_no_key():
    import re

    text = (ROOT / "delivery" / "env.example").read_text()
    lines = text.splitlines()
    for name in sorted(set(SPEC_VARIABLES) | (variables_the_code_reads() - DEVELOPMENT_ONLY)):
        at = [i for i, line in enumerate(lines) if re.match(rf"#?{name}(_FILE)?=", line) or f" {name}" in line]
        assert at, f"{name} is not in config/.env.example"
    def is_variable(line):
        return re.match(r"#?[A-Z_]+=", line) is not None

    for i, line in enumerate(lines):
        if is_variable(line):  # a comment explains it, or the group it stands in
            j = i - 1
            while is_variable(lines[j]):
                j -= 1
            assert lines[j].startswith("# "), f"no explanation above: {line}"
    assert not re.search(r"\b[0-9a-fA-F]{64}\b", text), "a key-like value in the example"
    for line in lines:
        if re.match(r"#?[A-Z_]*KEY=", line):
            assert line.split("=", 1)[1] == "", f"a key value in the example: {line.split('=')[0]}"
