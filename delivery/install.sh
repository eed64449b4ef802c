#!/bin/sh
# Install the portal into a virtualenv from this delivery's wheelhouse, with
# no package index: nothing is downloaded, every wheel is pinned by hash.
#
#   scripts/install.sh [--venv DIR] [--python PYTHON]
#
#   --venv DIR       where the virtualenv goes (default /opt/sealed-search/venv;
#                    keep it outside this folder, which verify-integrity.sh checks)
#   --python PYTHON  the interpreter (default: python3.11, then python3); it must
#                    be the Python version the wheelhouse was built for
#
# Adds two commands to DIR/bin: portal-manage (the portal's manage.py) and
# portal-serve (gunicorn with the portal's configuration).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
venv=/opt/sealed-search/venv
python=""
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) venv=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$python" ]; then
    python=$(command -v python3.11 || command -v python3 || true)
fi
[ -n "$python" ] || { echo "install.sh: no python3.11 found; give --python" >&2; exit 1; }

wheelhouse="$here/wheelhouse"
[ -f "$wheelhouse/requirements.txt" ] || { echo "install.sh: $wheelhouse/requirements.txt is missing" >&2; exit 1; }

# The wheelhouse holds CPython wheels for one version (cp311 for 3.11): say so
# plainly instead of letting pip fail on a tag.
# (The version-specific wheels: cpXY-cpXY tags; abi3 wheels fit any later Python.)
want=$(ls "$wheelhouse" | sed -n 's/.*-cp\([0-9]\)\([0-9]*\)-cp[0-9]*-.*\.whl$/\1.\2/p' | sort -u | head -n 1)
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -n "$want" ] && [ "$want" != "$have" ]; then
    echo "install.sh: $python is Python $have; this wheelhouse is for Python $want (give --python)" >&2
    exit 1
fi

case "$venv" in /*) ;; *) venv="$(pwd)/$venv" ;; esac
case "$venv/" in "$here"/*)
    echo "install.sh: put the virtualenv outside the delivery folder ($here): verify-integrity.sh reports every file added there" >&2
    exit 1 ;;
esac

echo "Creating the virtualenv $venv with $python (Python $have)"
"$python" -m venv "$venv"

# No index, no configuration file, no extra find-links, whatever the host's pip is set to.
for name in $(env | sed -n 's/^\(PIP_[A-Z_]*\)=.*/\1/p'); do unset "$name"; done
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1

echo "Installing from $wheelhouse (no index; every wheel checked against its pinned hash)"
"$venv/bin/python" -m pip install --quiet --no-index --no-cache-dir --find-links "$wheelhouse" \
    --only-binary :all: --require-hashes -r "$wheelhouse/requirements.txt"

site=$("$venv/bin/python" -c 'import portal, os; print(os.path.dirname(os.path.dirname(portal.__file__)))')
cat > "$venv/bin/portal-manage" <<EOF
#!/bin/sh
# The portal's manage.py, from the installed package.
export DJANGO_SETTINGS_MODULE=portal.settings
exec "$venv/bin/python" -m django "\$@"
EOF
cat > "$venv/bin/portal-serve" <<EOF
#!/bin/sh
# gunicorn with the portal's configuration (PORTAL_BIND, PORTAL_WORKERS, ...).
export DJANGO_SETTINGS_MODULE=portal.settings
exec "$venv/bin/gunicorn" -c "$site/portal/gunicorn.conf.py" portal.wsgi "\$@"
EOF
chmod 0755 "$venv/bin/portal-manage" "$venv/bin/portal-serve"

version=$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("sealed-search-portal"))')
torch=$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("torch"))')
echo "Installed sealed-search-portal $version (torch $torch) into $venv"
echo "Commands: $venv/bin/portal-manage (manage.py), $venv/bin/portal-serve (gunicorn)"
echo "Next: scripts/verify-integrity.sh --venv $venv --env-file /etc/sealed-search/portal.env (README-delivery.md)"
