"""How many gunicorn workers, threads per worker and torch threads per worker
to run, from the cores this process may use (its CPU affinity and its
cgroup's CPU quota), so that workers × torch threads never exceeds them.

Measured on 2 cores (issue 13): 2 workers × 2 torch threads each served
20–30 searches/s at 16 clients; 2 workers × 1 torch thread served 108–123.
Every value can be set in the environment (PORTAL_WORKERS, PORTAL_THREADS,
EMBED_TORCH_THREADS); a choice that oversubscribes the cores is kept and
warned about. On a GPU one worker holds the model (one copy in the GPU's
memory) and its threads feed the micro-batcher.

No Django here: gunicorn.conf.py reads it before the application loads.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
DEFAULT_THREADS = 4
GPU_THREADS = 8


@dataclass(frozen=True)
class Sizing:
    cores: int
    workers: int
    threads: int
    torch_threads: int
    device: str  # "cpu" or "gpu"
    from_environment: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        chosen = ", ".join(self.from_environment) if self.from_environment else "none"
        return (f"{self.cores} usable core(s), {self.device}: {self.workers} worker(s) × {self.threads} thread(s), "
                f"torch {self.torch_threads} thread(s) each (set in the environment: {chosen})")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """The cgroup's CPU quota in cores (v2 cpu.max, or v1 cfs quota/period); None: no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores(affinity: int | None = None, root: Path = CGROUP) -> int:
    """Cores this process may run on: its affinity, capped by the cgroup quota (rounded down, at least 1)."""
    cores = len(os.sched_getaffinity(0)) if affinity is None else affinity
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, int(limit)))
    return max(1, cores)


def _positive(environ, name: str) -> int | None:
    raw = (environ.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number of at least 1, not {raw!r}") from None
    if value < 1:
        raise SystemExit(f"{name} must be a whole number of at least 1, not {raw!r}")
    return value


def on_gpu(environ) -> bool:
    """Whether the model will run on a GPU: EMBED_DEVICE says cuda, or says auto and an NVIDIA device is present."""
    device = (environ.get("EMBED_DEVICE") or "auto").strip().lower()
    return device.startswith("cuda") or (device == "auto" and Path("/dev/nvidiactl").exists())


def plan(environ=None, cores: int | None = None) -> Sizing:
    """The sizing for this machine and environment."""
    environ = os.environ if environ is None else environ
    cores = usable_cores() if cores is None else cores
    gpu = on_gpu(environ)
    given = {name: _positive(environ, name) for name in ("PORTAL_WORKERS", "PORTAL_THREADS", "EMBED_TORCH_THREADS")}
    torch_threads = given["EMBED_TORCH_THREADS"] or 1
    if gpu:
        workers = given["PORTAL_WORKERS"] or 1
        threads = given["PORTAL_THREADS"] or GPU_THREADS
    else:
        workers = given["PORTAL_WORKERS"] or max(1, cores // torch_threads)
        threads = given["PORTAL_THREADS"] or DEFAULT_THREADS
    warnings = []
    if not gpu and workers * torch_threads > cores:
        warnings.append(f"{workers} workers × {torch_threads} torch threads is more than the {cores} usable core(s): "
                        "searches will queue for the CPU (lower PORTAL_WORKERS or EMBED_TORCH_THREADS)")
    return Sizing(cores=cores, workers=workers, threads=threads, torch_threads=torch_threads,
                  device="gpu" if gpu else "cpu", from_environment=tuple(k for k, v in given.items() if v),
                  warnings=tuple(warnings))
