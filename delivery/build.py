#!/usr/bin/env python3
"""`make delivery`: build dist/sealed-search-<version>-airgap.tar.gz.

The archive holds everything an air-gapped host needs (see README-delivery.md
inside it): a wheelhouse with every runtime dependency and the portal's own
wheel, the sealed model, the compose/Docker/systemd files, config templates,
install and verification scripts, and MANIFEST.sha256 signed with an Ed25519
release key.

Options come from the command line or the environment (the Makefile passes
them through):

    MODEL=path/to/bundle.q3e.enc     the sealed model (default: the demo bundle)
    TORCH_SPEC='torch==2.13.0'       CPU build (default); 'torch===2.13.0' takes
                                     the CUDA build that PyPI serves for Linux
    DELIVERY_SIGNING_KEY_FILE=key.pem  Ed25519 release key (PEM, PKCS#8); without
                                     it a throwaway key signs a demo delivery
    DELIVERY_WHEEL_CACHE=0           rebuild the dependency wheelhouse even if
                                     build/wheelhouse-cache holds one

Building needs a package index (it downloads the wheels); nothing it produces
does.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import integrity  # noqa: E402  (delivery/integrity.py, shipped as scripts/integrity.py)

DEFAULT_MODEL = ROOT / "model" / "demo-minilm.q3e.enc"
DEFAULT_TORCH = "torch==2.13.0"
# Files other engineers own; the build copies what exists and names what does not.
REQUIRED = ["docker-compose.yml", "Dockerfile", "deploy/*.service", "config/audit-policy.json"]
OPTIONAL = ["docker-compose.*.yml", "deploy/*.timer", "deploy/*.md", "deploy/*.conf"]
SCRIPTS = {  # delivery/<source> -> <archive path>, executable?
    "install.sh": ("scripts/install.sh", True),
    "setup-audit-user.sh": ("scripts/setup-audit-user.sh", True),
    "verify-integrity.sh": ("scripts/verify-integrity.sh", True),
    "integrity.py": ("scripts/integrity.py", True),
    "env.example": ("config/.env.example", False),
}
# Names the portal's wheel puts at the top of site-packages; no other wheel may.
OWN_TOP_LEVEL = {"portal", "keystore", "search", "audit", "templates", "locale", "tools"}


class BuildError(Exception):
    pass


def log(message: str) -> None:
    print(f"[delivery] {message}", flush=True)


def run(cmd: list[str], **kwargs) -> None:
    log("$ " + " ".join(cmd))
    result = subprocess.run(cmd, **kwargs)
    if result.returncode != 0:
        raise BuildError(f"command failed ({result.returncode}): {' '.join(cmd)}")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def offline_pip_env() -> dict:
    """The environment of a pip that must not reach any index."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


# --- inputs ----------------------------------------------------------------------

def collect_listed_files() -> list[str]:
    found, missing = [], []
    for pattern in REQUIRED:
        matches = sorted(glob.glob(pattern, root_dir=ROOT))
        if not matches:
            missing.append(pattern)
        found += matches
    for pattern in OPTIONAL:
        found += sorted(glob.glob(pattern, root_dir=ROOT))
    if missing:
        message = "these files belong in the delivery but are missing from the repository: " + ", ".join(missing)
        if os.environ.get("DELIVERY_ALLOW_MISSING") != "1":
            raise BuildError(message + " (DELIVERY_ALLOW_MISSING=1 builds without them, for a trial only)")
        log("WARNING: " + message)
    return sorted(set(found))


def wheel_top_level(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as wheel:
        names = {n.split("/", 1)[0] for n in wheel.namelist()}
    return {n.removesuffix(".py") for n in names if not n.endswith((".dist-info", ".data"))}


def dependency_wheelhouse(torch_spec: str, cache_root: Path, use_cache: bool) -> Path:
    """Every runtime dependency as a wheel for this interpreter and platform,
    kept in build/wheelhouse-cache under a key of what decides its content."""
    deps = [torch_spec] + [d for d in project()["dependencies"] if not d.replace(" ", "").startswith("torch==")]
    key_source = json.dumps({"deps": deps, "python": sys.version_info[:2], "platform": platform.machine(),
                             "libc": platform.libc_ver()}, sort_keys=True)
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    target = cache_root / key
    if use_cache and (target / ".complete").is_file():
        log(f"dependency wheels from the cache {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="partial-", dir=cache_root))  # same filesystem: renamed into place
    log(f"downloading / building the dependency wheels ({torch_spec}) — this needs the package index")
    run([sys.executable, "-m", "pip", "wheel", "--wheel-dir", str(tmp), "--progress-bar", "off",
         "--disable-pip-version-check", *deps])
    (tmp / ".complete").write_text(key_source + "\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    if (target / ".complete").is_file():  # another build finished the same set meanwhile: keep that one
        shutil.rmtree(tmp)
        return target
    shutil.rmtree(target, ignore_errors=True)  # an unfinished one
    tmp.rename(target)
    return target


def source_tree(dest: Path) -> Path:
    """The project's files (tracked and new, not ignored) copied apart, so
    that building its wheel writes nothing into the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    if dest.exists():
        shutil.rmtree(dest)
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("tests/", "bench/", "docs/", "dist/", "build/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def own_wheel(work: Path) -> Path:
    src = source_tree(work / "src")
    out = work / "own-wheel"
    shutil.rmtree(out, ignore_errors=True)
    try:
        from importlib.metadata import version

        isolated = int(version("setuptools").split(".")[0]) < 69
    except Exception:  # noqa: BLE001  no setuptools here: let pip fetch one
        isolated = True
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), "--progress-bar", "off",
           "--disable-pip-version-check", "--quiet"]
    # setuptools explains at length that templates/ and locale/ hold no
    # modules: keep that in a log, shown only when the build fails.
    with open(work / "own-wheel.log", "w") as build_log:
        try:
            run(cmd + ([] if isolated else ["--no-build-isolation"]) + [str(src)], stdout=build_log, stderr=build_log)
        except BuildError:
            print((work / "own-wheel.log").read_text()[-6000:], file=sys.stderr)
            raise
    wheels = list(out.glob("sealed_search_portal-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one wheel of the portal, found {wheels}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
    for needed in ("templates/base.html", "locale/zh_Hans/LC_MESSAGES/django.mo", "portal/gunicorn.conf.py",
                   "search/demo_data/faq-kb.txt", "tools/verify_audit_export.py", "portal/static/portal/site.js"):
        if needed not in names:
            raise BuildError(f"the portal's wheel lacks {needed}: check [tool.setuptools] in pyproject.toml")
    return wheels[0]


def link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def write_lock(wheelhouse: Path) -> None:
    """wheelhouse/requirements.txt: every wheel pinned by version and hash, so
    that `pip install --require-hashes` takes exactly these files."""
    lines = ["# Every wheel of this delivery, pinned; scripts/install.sh installs with --require-hashes.\n"]
    for wheel in sorted(wheelhouse.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        lines.append(f"{name}=={version} --hash=sha256:{integrity.sha256_file(wheel)}\n")
    (wheelhouse / "requirements.txt").write_text("".join(lines))


def check_wheelhouse(wheelhouse: Path) -> None:
    clashes = []
    for wheel in wheelhouse.glob("*.whl"):
        if not wheel.name.startswith("sealed_search_portal-"):
            shared = wheel_top_level(wheel) & OWN_TOP_LEVEL
            if shared:
                clashes.append(f"{wheel.name} also installs {', '.join(sorted(shared))}")
    if clashes:
        raise BuildError("top-level names clash with the portal's: " + "; ".join(clashes))
    log("checking that the wheelhouse installs with no index (pip --dry-run)")
    offline = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--no-index",
               "--find-links", str(wheelhouse), "--only-binary", ":all:"]
    # As scripts/install.sh installs (every wheel pinned by hash) ...
    run(offline + ["--require-hashes", "-r", str(wheelhouse / "requirements.txt")], env=offline_pip_env())
    # ... and as the Dockerfile and a person would: by the project's name alone.
    run(offline + ["sealed-search-portal"], env=offline_pip_env())


def bundle_header(model: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from keystore.bundle import inspect_bundle

    return inspect_bundle(model)


def signing_key(path: str | None, work: Path) -> tuple[bytes, bool]:
    if path:
        pem = Path(path).read_bytes()
        return pem, False
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())
    return pem, True


def glibc_needed(wheelhouse: Path) -> str:
    """The newest glibc any wheel needs (each wheel: the oldest of its manylinux tags)."""
    import re

    needed = (2, 17)
    for wheel in wheelhouse.glob("*.whl"):
        platforms = wheel.name[:-4].split("-")[-1].split(".")
        versions = [(2, 17) if p == "manylinux2014_x86_64" else (2, 5) if p.startswith("manylinux1") else
                    (int(m.group(1)), int(m.group(2)))
                    for p in platforms if (m := re.match(r"manylinux_(\d+)_(\d+)_", p)) or p.startswith("manylinux")]
        if versions:
            needed = max(needed, min(versions))
    return f"{needed[0]}.{needed[1]}"


def base_images(listed: list[str]) -> list[str]:
    """The public images the compose files and Dockerfile start from: the
    archive carries none, so the customer loads them (docker load)."""
    import re

    images = set()
    for rel in listed:
        text = (ROOT / rel).read_text(errors="replace")
        if rel.startswith("docker-compose"):
            images.update(m for m in re.findall(r"^\s*image:\s*[\"']?([^\s\"']+)", text, re.M)
                          if not m.startswith("sealed-search-portal"))
        elif rel == "Dockerfile":
            images.update(re.findall(r"^ARG\s+\w*IMAGE\w*=(\S+)", text, re.M))
            images.update(m for m in re.findall(r"^FROM\s+(\S+)", text, re.M) if "$" not in m)
    return sorted(images)


def render_readme(template: Path, values: dict[str, str]) -> str:
    text = template.read_text(encoding="utf-8")
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    if "{{" in text:
        raise BuildError("README-delivery.md has a placeholder the build did not fill")
    return text


def make_tarball(stage: Path, archive: Path, level: int) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        if info.isfile():
            info.mode = 0o755 if info.mode & 0o100 else 0o644
        elif info.isdir():
            info.mode = 0o755
        return info

    with tarfile.open(partial, "w:gz", compresslevel=level) as tar:
        tar.add(stage, arcname=stage.name, filter=normalise)
    partial.replace(archive)


# --- the build -----------------------------------------------------------------------

def build(args) -> Path:
    started = time.monotonic()
    meta = project()
    version = meta["version"]
    name = f"sealed-search-{version}-airgap"
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    listed = collect_listed_files()
    model = Path(args.model).resolve()
    if not model.is_file():
        hint = ("run `make serve-setup` first (it seals the demo model), or pass MODEL=path/to/bundle.q3e.enc"
                if model == DEFAULT_MODEL else "give MODEL=path/to/bundle.q3e.enc")
        raise BuildError(f"no sealed model bundle at {model}: {hint}")
    header = bundle_header(model)

    deps = dependency_wheelhouse(args.torch_spec, Path(args.cache).resolve(), args.use_cache)
    portal_wheel = own_wheel(work)

    stage = work / "stage" / name
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    wheelhouse = stage / "wheelhouse"
    for wheel in sorted(deps.glob("*.whl")):
        if not wheel.name.startswith("sealed_search_portal-"):
            link_or_copy(wheel, wheelhouse / wheel.name)
    link_or_copy(portal_wheel, wheelhouse / portal_wheel.name)
    write_lock(wheelhouse)
    check_wheelhouse(wheelhouse)
    torch_wheels = sorted(w.name for w in wheelhouse.glob("torch-*.whl"))

    link_or_copy(model, stage / "model" / model.name)
    for rel in listed:
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, stage / rel)
    for source, (dest, executable) in SCRIPTS.items():
        (stage / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(HERE / source, stage / dest)
        os.chmod(stage / dest, 0o755 if executable else 0o644)
    (stage / "tools").mkdir(exist_ok=True)
    shutil.copy2(ROOT / "tools" / "verify_audit_export.py", stage / "tools" / "verify_audit_export.py")

    pem, throwaway = signing_key(args.signing_key, work)
    from cryptography.hazmat.primitives import serialization

    public = serialization.load_pem_private_key(pem, password=None).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fingerprint = integrity.fingerprint(public)
    if throwaway:
        note_en = ("**This delivery is a demonstration: it was signed with a throwaway key generated for this build "
                   "(no `DELIVERY_SIGNING_KEY_FILE` was given). Do not accept it as a release.**")
        note_zh = "**本交付包仅用于演示：构建时未提供 `DELIVERY_SIGNING_KEY_FILE`，使用了一次性生成的临时密钥签名。请勿将其作为正式发布接收。**"
    else:
        note_en = "Signed with the release key of the vendor; compare its fingerprint with your release letter."
        note_zh = "由供应商的发布密钥签名；请将指纹与发布函中的指纹核对。"
    # The public header names no model (that is sealed too): size and key id only.
    model_lines = (f"`model/{model.name}` — sealed bundle, {header['plaintext_size'] / 2**20:.0f} MiB of model in "
                   f"{header['chunk_count']} authenticated chunks, for model key id `{header['key_id']}`")
    readme = render_readme(HERE / "README-delivery.md", {
        "VERSION": version, "ARCHIVE": name + ".tar.gz", "FOLDER": name, "FINGERPRINT": fingerprint,
        "SIGNING_NOTE_EN": note_en, "SIGNING_NOTE_ZH": note_zh, "MODEL": model_lines,
        "MODEL_FILE": model.name, "MODEL_KEY_ID": header["key_id"], "TORCH": ", ".join(torch_wheels),
        "PYTHON": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "LISTED": ", ".join(f"`{p}`" for p in listed if not p.startswith("config/")),
        "GLIBC": glibc_needed(wheelhouse),
        "IMAGES": ", ".join(f"`{i}`" for i in base_images(listed)) or "(none named)",
    })
    (stage / "README-delivery.md").write_text(readme, encoding="utf-8")
    integrity.write_signed_manifest(stage, pem)

    archive = Path(args.dist).resolve() / f"{name}.tar.gz"
    log(f"writing {archive}")
    make_tarball(stage, archive, args.compresslevel)
    size = archive.stat().st_size
    log(f"built {archive} ({size / 2**20:.1f} MiB, {size} bytes) in {time.monotonic() - started:.0f}s")
    log(f"torch: {', '.join(torch_wheels)}; model key id {header['key_id']}")
    log(f"release key fingerprint (SHA-256 of the Ed25519 public key): {fingerprint}")
    if throwaway:
        log("WARNING: no DELIVERY_SIGNING_KEY_FILE: signed with a THROWAWAY key generated for this build — "
            "a demonstration delivery, not a release")
    if not args.keep_stage:
        shutil.rmtree(stage.parent)
    return archive


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("MODEL") or str(DEFAULT_MODEL))
    parser.add_argument("--torch-spec", default=os.environ.get("TORCH_SPEC") or DEFAULT_TORCH)
    parser.add_argument("--signing-key", default=os.environ.get("DELIVERY_SIGNING_KEY_FILE") or None)
    parser.add_argument("--dist", default=str(ROOT / "dist"))
    parser.add_argument("--work", default=str(ROOT / "build" / "delivery"))
    parser.add_argument("--cache", default=str(ROOT / "build" / "wheelhouse-cache"))
    parser.add_argument("--no-cache", dest="use_cache", action="store_false",
                        default=os.environ.get("DELIVERY_WHEEL_CACHE", "1") != "0")
    parser.add_argument("--compresslevel", type=int, default=int(os.environ.get("DELIVERY_GZIP_LEVEL", "6")))
    parser.add_argument("--keep-stage", action="store_true", help="keep the unpacked tree in build/delivery/stage")
    args = parser.parse_args(argv)
    try:
        build(args)
    except BuildError as exc:
        print(f"make delivery: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
