"""Right-sizing (issue 13): gunicorn's workers, threads and torch threads come
from the cores the process may use, so workers × torch threads never exceeds
them unless the environment says otherwise (and then a warning says so)."""
import os

import pytest

from portal.sizing import cgroup_cpu_limit, plan, usable_cores
from tests.search.conftest import minilm_dir, model_key, sealed_minilm  # noqa: F401  (fixtures)


def _cgroup_v2(tmp_path, text):
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def test_the_cgroup_quota_is_read_from_v2_and_v1(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    assert cgroup_cpu_limit(_cgroup_v2(a, "150000 100000\n")) == 1.5
    b = tmp_path / "b"
    b.mkdir()
    assert cgroup_cpu_limit(_cgroup_v2(b, "max 100000\n")) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path / "v1") == 2.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path / "v1") is None
    assert cgroup_cpu_limit(tmp_path / "nothing") is None


def test_usable_cores_are_the_affinity_capped_by_the_quota(tmp_path):
    assert usable_cores(affinity=8, root=_cgroup_v2(tmp_path, "250000 100000")) == 2  # 2.5 cores → 2
    assert usable_cores(affinity=2, root=_cgroup_v2(tmp_path, "800000 100000")) == 2
    assert usable_cores(affinity=4, root=_cgroup_v2(tmp_path, "50000 100000")) == 1  # half a core → 1
    assert usable_cores(affinity=3, root=tmp_path / "none") == 3
    limit = cgroup_cpu_limit()
    assert usable_cores() == max(1, min(len(os.sched_getaffinity(0)), int(limit) if limit else 10**6))


@pytest.mark.parametrize("cores", [1, 2, 4, 16])
def test_by_default_workers_times_torch_threads_equals_the_cores(cores):
    sizing = plan({}, cores=cores)
    assert (sizing.workers, sizing.torch_threads, sizing.threads) == (cores, 1, 4)
    assert sizing.workers * sizing.torch_threads <= cores and not sizing.warnings
    assert sizing.from_environment == ()


def test_the_environment_overrides_each_value_and_oversubscribing_is_warned():
    sizing = plan({"PORTAL_WORKERS": "2", "PORTAL_THREADS": "8", "EMBED_TORCH_THREADS": "2"}, cores=2)
    assert (sizing.workers, sizing.threads, sizing.torch_threads) == (2, 8, 2)
    assert sizing.from_environment == ("PORTAL_WORKERS", "PORTAL_THREADS", "EMBED_TORCH_THREADS")
    assert sizing.warnings and "more than the 2 usable core(s)" in sizing.warnings[0]
    # More torch threads per worker: fewer workers by default.
    assert (plan({"EMBED_TORCH_THREADS": "2"}, cores=4).workers, plan({"EMBED_TORCH_THREADS": "4"}, cores=2).workers) \
        == (2, 1)


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_value_is_a_clear_start_up_error(value):
    with pytest.raises(SystemExit) as refused:
        plan({"PORTAL_WORKERS": value}, cores=2)
    assert str(refused.value) == f"PORTAL_WORKERS must be a whole number of at least 1, not {value!r}"


def test_on_a_gpu_one_worker_holds_the_model():
    sizing = plan({"EMBED_DEVICE": "cuda"}, cores=16)
    assert (sizing.device, sizing.workers, sizing.threads) == ("gpu", 1, 8) and not sizing.warnings
    assert plan({"EMBED_DEVICE": "cpu"}, cores=16).workers == 16


# --- the shipped gunicorn ---------------------------------------------------------------------


@pytest.fixture
def shipped_server(tmp_path, sealed_minilm, model_key):  # noqa: F811
    from tests.portal.live_gunicorn import start_gunicorn

    yield from start_gunicorn(tmp_path, model_path=sealed_minilm, model_key=model_key, workers=None)


@pytest.mark.slow
def test_the_shipped_gunicorn_runs_a_worker_a_core_with_one_torch_thread_and_says_so(shipped_server):
    import requests

    from tests.portal.live_gunicorn import manage

    live, cores = shipped_server, usable_cores()
    live.wait_for(lambda: len(live.worker_pids()) == cores, f"{cores} workers")
    assert (f"sizing: {cores} usable core(s), cpu: {cores} worker(s) × 4 thread(s), torch 1 thread(s) each "
            "(set in the environment: none)") in live.log_text()
    assert "more than the" not in live.log_text()
    # Staff see the sizing on /readyz, as the worker that answered runs it.
    manage(live.env, "shell", "-c", "from django.contrib.auth import get_user_model; "
           "get_user_model().objects.filter(username='alice').update(is_staff=True)")
    session = requests.Session()
    session.get(live.base + "/accounts/login/", timeout=30)
    answer = session.post(live.base + "/accounts/login/", timeout=30, allow_redirects=False, data={
        "username": "alice", "password": "live-server-password",
        "csrfmiddlewaretoken": session.cookies["csrftoken"]})
    assert answer.status_code == 302, answer.text[:300]
    checks = session.get(live.base + "/readyz", timeout=30).json()["checks"]
    assert checks["sizing"]["ok"] and checks["sizing"]["detail"].endswith("this worker runs torch on 1 thread(s)")
    assert checks["sizing"]["detail"].startswith(f"{cores} usable core(s), cpu: {cores} worker(s)")
    assert "checks" not in requests.get(live.base + "/readyz", timeout=30).json()  # not to anyone else


def test_gunicorn_refuses_to_start_on_a_bad_worker_count(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PORTAL_WORKERS="many", PORTAL_DOTENV="")
    done = subprocess.run([str(root / ".venv" / "bin" / "gunicorn"), "-c", "portal/gunicorn.conf.py", "--check-config",
                           "portal.wsgi"], env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "PORTAL_WORKERS must be a whole number of at least 1, not 'many'" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
