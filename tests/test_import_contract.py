"""The floors of the house (SPEC §2) hold, and the import contract that
guards them (pyproject.toml [tool.importlinter], run by `make test`) would
notice a floor being crossed: each case below copies the packages aside,
adds one forbidden import and expects lint-imports to name the contract."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("keystore", "audit", "portal", "search")

FLOORS = "Floors run one way: keystore < audit ledger < portal < search | audit review"
SEARCH_ON_TOP = "Nothing imports search except portal's URLconf"
KEYSTORE_PLAIN = "keystore is plain Python: no Django"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """lint-imports (this interpreter's) on the packages in ``cwd``, by the pyproject.toml there."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                               "sys.exit(lint_imports_command())", "--no-cache", "--no-logo"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (FLOORS, SEARCH_ON_TOP, KEYSTORE_PLAIN):
        assert f"{name} KEPT" in result.stdout, result.stdout


@pytest.fixture
def tree(tmp_path):
    """A copy of the packages and the contract, to break on purpose."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


CROSSINGS = [
    ("audit/ledger/canonical.py", "import portal.models", FLOORS, "audit.ledger.canonical -> portal.models"),
    ("audit/apps.py", "from portal.readiness import register_check", FLOORS, "audit.apps -> portal.readiness"),
    ("audit/models.py", "from portal.models import Tenant", FLOORS, "audit.models -> portal.models"),
    ("audit/ledger/verify.py", "from audit.review import selectors", FLOORS,
     "audit.ledger.verify -> audit.review.selectors"),
    ("keystore/keys.py", "import audit.ledger.canonical", FLOORS, "keystore.keys -> audit.ledger.canonical"),
    ("portal/services.py", "from audit.review import presign", FLOORS, "portal.services -> audit.review.presign"),
    ("audit/review/selectors.py", "import search.models", FLOORS, "audit.review.selectors -> search.models"),
    ("portal/tenancy.py", "import search.models", SEARCH_ON_TOP, "portal.tenancy -> search.models"),
    ("audit/management/commands/audit_verify.py", "import search.models", SEARCH_ON_TOP,
     "audit.management.commands.audit_verify -> search.models"),
    ("keystore/signing.py", "import django.conf", KEYSTORE_PLAIN, "keystore.signing -> django (l."),
]


@pytest.mark.parametrize("module, line, contract, named", CROSSINGS,
                         ids=[named.split(" (")[0].replace(" ", "") for *_, named in CROSSINGS])
def test_a_crossed_floor_breaks_the_contract(tree, module, line, contract, named):
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # crossing a floor on purpose\n")
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{contract} BROKEN" in result.stdout, result.stdout
    assert named in result.stdout, result.stdout
