"""keystore can be read and reviewed alone: it imports the standard library and cryptography, nothing else."""
import json
import subprocess
import sys
from pathlib import Path

import keystore

ROOT = Path(keystore.__file__).resolve().parent.parent
# cryptography's own compiled parts register these top-level names.
CRYPTOGRAPHY = {"cryptography", "_cffi_backend", "_openssl"}


def test_keystore_imports_only_the_standard_library_and_cryptography():
    modules = sorted(p.stem for p in Path(keystore.__file__).parent.glob("*.py"))
    probe = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        f"for name in {modules!r}: __import__('keystore.' + name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    imported = set(json.loads(loaded.stdout))
    assert "keystore" in imported
    assert sorted(imported - set(sys.stdlib_module_names) - CRYPTOGRAPHY - {"keystore"}) == []
