#!/bin/sh
# Check that this delivery is the one the vendor signed and that the keys and
# model fit together. Exits 0 only when every check passes; each failure is
# printed on its own line, naming the file.
#
#   scripts/verify-integrity.sh [--venv DIR] [--env-file FILE]
#                               [--model-key-file FILE] [--audit-key-file FILE]
#                               [--fingerprint HEX] [--pubkey PEM] [--manifest-only]
#
# 1. MANIFEST.sha256 is signed by the release key (Ed25519); the key's
#    fingerprint must match --fingerprint (or RELEASE_KEY_FINGERPRINT) when given
#    -- compare it with your release letter -- or use --pubkey with a copy of the
#    public key you received apart from the archive.
# 2. Every file matches its SHA-256; each one that differs, is missing or is
#    extra is named.
# 3. The two key files (EMBED_MODEL_KEY_FILE, AUDIT_HMAC_KEY_FILE: from the
#    options, the environment or --env-file) each hold 32 bytes as 64 hex
#    characters or base64, and differ from each other.
# 4. Every sealed model in model/ authenticates with the model key
#    (`portal-manage model_verify`, from the virtualenv scripts/install.sh made).
# 5. Where docker is installed: the images the compose files pin by digest are
#    present with that digest (and those listed in IMAGE_DIGESTS, if shipped).
#
# --manifest-only runs 1 and 2 (before installing, or without the keys at hand).
set -u

here=$(cd "$(dirname "$0")/.." && pwd)
venv=""
env_file=""
model_key_file=${EMBED_MODEL_KEY_FILE:-}
audit_key_file=${AUDIT_HMAC_KEY_FILE:-}
manifest_args=""
manifest_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) venv=$2; shift 2 ;;
        --env-file) env_file=$2; shift 2 ;;
        --model-key-file) model_key_file=$2; shift 2 ;;
        --audit-key-file) audit_key_file=$2; shift 2 ;;
        --fingerprint) manifest_args="$manifest_args --fingerprint $2"; shift 2 ;;
        --pubkey) manifest_args="$manifest_args --pubkey $2"; shift 2 ;;
        --manifest-only) manifest_only=1; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "verify-integrity.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

failures=0
fail() { echo "FAILED: $*"; failures=$((failures + 1)); }

# A value from the env file (KEY=value, optional quotes), for the *_FILE variables.
from_env_file() {
    [ -n "$env_file" ] && [ -f "$env_file" ] || return 0
    sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$env_file" | tail -n 1 | sed "s/^[\"']//; s/[\"']\$//"
}
if [ -n "$env_file" ] && [ ! -f "$env_file" ]; then fail "--env-file $env_file does not exist"; fi
[ -n "$model_key_file" ] || model_key_file=$(from_env_file EMBED_MODEL_KEY_FILE)
[ -n "$audit_key_file" ] || audit_key_file=$(from_env_file AUDIT_HMAC_KEY_FILE)

python=""
if [ -n "$venv" ] && [ -x "$venv/bin/python" ]; then python="$venv/bin/python"; fi
[ -n "$python" ] || python=$(command -v python3 || true)
if [ -z "$python" ]; then echo "FAILED: no python3 to run scripts/integrity.py" >&2; exit 1; fi

echo "== 1-2. signature and files of $here"
# shellcheck disable=SC2086  # the options are words without spaces
"$python" "$here/scripts/integrity.py" manifest "$here" $manifest_args || fail "the delivery's files (see the lines above)"

if [ "$manifest_only" -eq 0 ]; then
    echo "== 3. key files"
    if [ -z "$model_key_file" ] || [ -z "$audit_key_file" ]; then
        fail "give --model-key-file and --audit-key-file (or EMBED_MODEL_KEY_FILE / AUDIT_HMAC_KEY_FILE, or --env-file)"
    else
        "$python" "$here/scripts/integrity.py" keys "$model_key_file" "$audit_key_file" || fail "the key files (see above)"
    fi

    echo "== 4. sealed model"
    if [ -z "$venv" ] || [ ! -x "$venv/bin/portal-manage" ]; then
        fail "give --venv DIR, the virtualenv scripts/install.sh made (it runs model_verify)"
    elif [ -n "$model_key_file" ]; then
        found=0
        for bundle in "$here"/model/*.q3e.enc; do
            [ -f "$bundle" ] || continue
            found=1
            # Only the model key is needed; the portal's other settings come from --env-file.
            if ! (cd / && env PORTAL_DOTENV="$env_file" EMBED_MODEL_KEY_FILE="$model_key_file" \
                    AUDIT_HMAC_KEY_FILE="$audit_key_file" "$venv/bin/portal-manage" model_verify --skip-checks "$bundle"); then
                fail "model/$(basename "$bundle") does not authenticate with the model key"
            fi
        done
        [ "$found" -eq 1 ] || fail "no sealed model (model/*.q3e.enc) in the delivery"
    fi

    echo "== 5. container images"
    if command -v docker >/dev/null 2>&1; then
        pinned=$(cat "$here"/docker-compose*.yml 2>/dev/null | sed -n 's/^[[:space:]]*image:[[:space:]]*["'\'']\{0,1\}\([^"'\'' ]*@sha256:[0-9a-f]\{64\}\).*/\1/p' | sort -u)
        if [ -f "$here/IMAGE_DIGESTS" ]; then
            pinned="$pinned $(sed -n 's/^\([^# ][^ ]*@sha256:[0-9a-f]\{64\}\).*/\1/p' "$here/IMAGE_DIGESTS")"
        fi
        for ref in $pinned; do
            digest=${ref##*@}
            repo=${ref%@*}
            if docker image inspect --format '{{join .RepoDigests " "}}' "$ref" 2>/dev/null | grep -q "$digest"; then
                echo "image $repo@$digest present"
            else
                fail "image $ref is not loaded, or its digest differs"
            fi
        done
        [ -n "$pinned" ] || echo "no image pinned by digest in the compose files"
    else
        echo "docker is not installed: image digests not checked"
    fi
fi

if [ "$failures" -eq 0 ]; then
    echo "verify-integrity: OK"
    exit 0
fi
echo "verify-integrity: FAILED ($failures)"
exit 1
