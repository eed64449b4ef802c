"""Keys: read once from NAME or NAME_FILE, validated at startup, never shown."""
import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keystore.keys import AUDIT_KEY, MODEL_KEY, KeyConfigError, get_keyring, key_id, parse_key, read_keyring

ROOT = Path(__file__).resolve().parents[2]
HEX_A = "a1" * 32
HEX_B = "b2" * 32


def run_startup(env_overrides: dict, command=("check",)):
    """Start the portal (manage.py check, and the WSGI module) with a given environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBED_MODEL_KEY", "AUDIT_HMAC_KEY"))}
    env.update(PORTAL_DOTENV="", **env_overrides)
    manage = subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    wsgi = subprocess.run([sys.executable, "-c", "import portal.wsgi"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    return manage, wsgi


def test_hex_and_base64_keys_parse_to_the_same_bytes():
    raw = bytes(range(32))
    assert parse_key(raw.hex(), name="X") == raw
    assert parse_key(base64.b64encode(raw).decode() + "\n", name="X") == raw


def test_key_file_with_trailing_newline_is_accepted(tmp_path):
    path = tmp_path / "model.key"
    path.write_text(HEX_A + "\n")
    ring = read_keyring({"EMBED_MODEL_KEY_FILE": str(path), AUDIT_KEY: HEX_B})
    assert ring.errors == [] and ring.model_key == bytes.fromhex(HEX_A)


def test_key_id_is_public_and_stable_but_not_the_key():
    raw = bytes.fromhex(HEX_A)
    assert key_id(raw) == key_id(raw) and key_id(raw) != key_id(bytes.fromhex(HEX_B))
    assert HEX_A not in key_id(raw) and len(key_id(raw)) < 24


def test_reading_removes_the_variables():
    env = {MODEL_KEY: HEX_A, "AUDIT_HMAC_KEY_FILE": "/nonexistent"}
    read_keyring(env)
    assert MODEL_KEY not in env and "AUDIT_HMAC_KEY_FILE" not in env


def test_keys_are_gone_from_the_environment_after_startup():
    assert not [name for name in os.environ if name.startswith((MODEL_KEY, AUDIT_KEY))]
    assert get_keyring().model_key and get_keyring().audit_key


def test_keyring_repr_shows_ids_not_keys():
    ring = get_keyring()
    assert ring.model_key.hex() not in repr(ring) and ring.model_key_id in repr(ring)


@pytest.mark.parametrize("overrides,variable", [
    ({AUDIT_KEY: HEX_B}, MODEL_KEY),                                       # missing
    ({MODEL_KEY: HEX_A, "EMBED_MODEL_KEY_FILE": "/etc/hostname", AUDIT_KEY: HEX_B}, MODEL_KEY),  # both
    ({MODEL_KEY: "c3" * 31, AUDIT_KEY: HEX_B}, MODEL_KEY),                 # wrong length (hex)
    ({MODEL_KEY: base64.b64encode(b"k" * 16).decode(), AUDIT_KEY: HEX_B}, MODEL_KEY),  # wrong length (b64)
    ({MODEL_KEY: "not a key at all, not hex!!", AUDIT_KEY: HEX_B}, MODEL_KEY),  # neither format
    ({MODEL_KEY: HEX_A, AUDIT_KEY: "zz" * 32}, AUDIT_KEY),                 # not hex, not b64
    ({MODEL_KEY: HEX_A, AUDIT_KEY: HEX_A}, AUDIT_KEY),                     # equal keys
])
def test_bad_key_configuration_stops_startup_naming_the_variable(overrides, variable):
    manage, wsgi = run_startup(overrides)
    for result in (manage, wsgi):
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert variable in output
        for value in overrides.values():
            if value not in ("/etc/hostname",):
                assert value not in output, "a key value was printed"


def test_good_keys_start_and_diffsettings_shows_no_key():
    manage, wsgi = run_startup({MODEL_KEY: HEX_A, AUDIT_KEY: base64.b64encode(bytes.fromhex(HEX_B)).decode()},
                               command=("diffsettings", "--all"))
    assert manage.returncode == 0 and wsgi.returncode == 0, manage.stderr + wsgi.stderr
    shown = manage.stdout
    for secret in (HEX_A, HEX_B, base64.b64encode(bytes.fromhex(HEX_B)).decode()):
        assert secret not in shown
    assert "EMBED_MODEL_PATH" in shown


def test_parse_errors_never_contain_the_value():
    with pytest.raises(KeyConfigError) as info:
        parse_key("secretsecretsecret", name="AUDIT_HMAC_KEY")
    assert "secretsecretsecret" not in str(info.value) and "AUDIT_HMAC_KEY" in str(info.value)


def test_a_malformed_number_stops_startup_naming_the_variable():
    manage, wsgi = run_startup({MODEL_KEY: HEX_A, AUDIT_KEY: HEX_B, "AUDIT_RETENTION_DAYS": "abc"})
    for result in (manage, wsgi):
        assert result.returncode != 0
        assert "AUDIT_RETENTION_DAYS must be a whole number" in result.stdout + result.stderr
    assert "Traceback" not in manage.stderr


@pytest.mark.parametrize("given_secret", ["", "s3cr3t-django-key-" + "q" * 40])
@pytest.mark.parametrize("output", ["hash", "unified"])
def test_diffsettings_never_prints_the_django_secret_key(given_secret, output):
    from keystore.keys import derive_subkey

    overrides = {MODEL_KEY: HEX_A, AUDIT_KEY: HEX_B, "DATABASE_URL": "postgres://portal:db-pa55word@db/portal"}
    if given_secret:
        overrides["DJANGO_SECRET_KEY"] = given_secret
    manage, _ = run_startup(overrides, command=("diffsettings", "--all", "--output", output))
    assert manage.returncode == 0, manage.stderr
    secret = given_secret or derive_subkey(bytes.fromhex(HEX_B), "django-secret-key").hex()
    assert "SECRET_KEY" in manage.stdout and "'PASSWORD'" in manage.stdout
    for value in (secret, "db-pa55word", HEX_A, HEX_B):
        assert value not in manage.stdout + manage.stderr
