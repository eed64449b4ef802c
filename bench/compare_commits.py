"""Before and after: run a benchmark on a base commit and on the working tree,
alternating, and compare the figures each run measures against its own floor.

A redesign must not make the hot paths slower. This machine is shared and
noisy, so raw milliseconds from two separate runs say little; each benchmark
already measures a floor in the same run (audit_append: a raw sqlite3 insert;
search_latency: the engine alone and the portal without audit), and the
comparison is between those same-run ratios, over alternating rounds.

    .venv/bin/python bench/compare_commits.py --base HEAD~5 --rounds 2 \
        audit_append -- --events 2000 --rounds 1
    .venv/bin/python bench/compare_commits.py --base HEAD~5 --rounds 2 \
        search_latency -- --requests 150

The base commit is checked out into a temporary git worktree (removed
afterwards) and run with this checkout's virtualenv; neither tree's
RESULTS.md keeps what these runs write. The table goes to stdout and bench/out/compare-<bench>.md.
"""
import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# For each benchmark: the figures to read from its printed table, and how to
# turn them into same-run ratios (lower is better for every one).
def _rows(text: str, label: str) -> list[list[float]]:
    """The numbers of every table row whose text holds the label."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and label in line:
            cells = [c.strip().replace(",", "") for c in line.strip("|").split("|")]
            rows.append([float(c) for c in cells if re.fullmatch(r"-?\d+(\.\d+)?", c)])
    if not rows:
        raise ValueError(f"no row {label!r} in the benchmark's output")
    return rows


def _row(text: str, label: str) -> list[float]:
    return _rows(text, label)[0]


def audit_append_figures(text: str) -> dict[str, float]:
    # One row per round and case: round, events/s, p50, p99. The median of the rounds, as the benchmark reports.
    service, raw = _rows(text, "record_event"), _rows(text, "raw sqlite3")
    return {"record_event p50 ms": statistics.median(r[2] for r in service),
            "record_event p50 / raw insert p50": statistics.median(s[2] / r[2] for s, r in zip(service, raw))}


def search_latency_figures(text: str) -> dict[str, float]:
    a, b, c = _row(text, "(a) engine"), _row(text, "(b) API search"), _row(text, "(c) API search")
    return {"(b) p50 ms": b[0], "(b) − (a) p50 ms": b[0] - a[0], "(b) / (c) p50": b[0] / c[0]}


FIGURES = {"audit_append": audit_append_figures, "search_latency": search_latency_figures}


def run(tree: Path, bench: str, args: list[str]) -> str:
    done = subprocess.run([sys.executable, f"bench/{bench}.py", *args], cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench/{bench}.py failed in {tree}:\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare against (e.g. HEAD~5)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("bench", choices=sorted(FIGURES))
    parser.add_argument("bench_args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    bench_args = [a for a in options.bench_args if a != "--"]
    base_rev = subprocess.run(["git", "rev-parse", "--short", options.base], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    head_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    base_tree = Path(tempfile.mkdtemp(prefix="bench-base-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base_tree), base_rev], cwd=ROOT, check=True)
    (base_tree / ".venv").symlink_to(ROOT / ".venv")  # benchmarks start ROOT/.venv/bin/gunicorn
    results: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
    kept_results = (ROOT / "bench" / "RESULTS.md").read_text()  # the short runs here must not replace it
    try:
        for r in range(options.rounds):
            order = ("base", "head") if r % 2 == 0 else ("head", "base")
            for side in order:
                tree = base_tree if side == "base" else ROOT
                text = run(tree, options.bench, bench_args)
                results[side].append(FIGURES[options.bench](text))
                print(f"round {r + 1}, {side}: {results[side][-1]}", file=sys.stderr, flush=True)
    finally:
        (ROOT / "bench" / "RESULTS.md").write_text(kept_results)
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT)
    names = list(results["head"][0])
    lines = [
        f"## `bench/{options.bench}.py`: {base_rev} (before) vs {head_rev} + working tree (after)",
        "",
        f"{options.rounds} alternating rounds each, `{' '.join(bench_args)}`; medians of the rounds. "
        "Ratios are to floors measured in the same run.",
        "",
        "| figure | before | after | after / before |",
        "|---|---:|---:|---:|",
    ]
    for name in names:
        before = statistics.median(x[name] for x in results["base"])
        after = statistics.median(x[name] for x in results["head"])
        lines.append(f"| {name} | {before:.3f} | {after:.3f} | {after / before:.2f} |")
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / f"compare-{options.bench}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
