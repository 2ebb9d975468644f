"""Run by tests/test_executor.py inside a private network namespace (`unshare -n`): bring up loopback, start one Ray
cluster on 127.0.0.1 (a head that runs no jobs and two worker nodes with 1 CPU and 1 logical GPU each) and play the
scenarios on it in turn, writing what each observed to the JSON file given as argument (after every scenario, so a
timeout keeps the earlier ones). Scenarios: the toy grid with the local executor and on the cluster; a job that
raises; the driver interrupted (Ctrl-C), then killed, then rerun; a worker node killed while a job runs on it."""

import functools
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
OUT, WORK = Path(sys.argv[1]), Path(sys.argv[2])
RESULTS: dict = {}
STORE = 80 * 1024**2


def save():
    OUT.write_text(json.dumps(RESULTS, indent=1, default=str))


def scenario(fn):
    t0 = time.time()
    try:
        RESULTS[fn.__name__] = fn()
    except BaseException:
        RESULTS[fn.__name__] = dict(error=traceback.format_exc())
    RESULTS[fn.__name__ + "_seconds"] = round(time.time() - t0, 1)
    save()
    return fn


def files(d: Path) -> dict:
    "Every output of a toy grid (not the start logs or the jobs table)."
    return {p.name: p.read_text() for p in sorted(d.iterdir()) if p.is_file() and p.suffix not in (".runs", ".csv")}


def runs(d: Path) -> dict:
    return {p.stem: [json.loads(x) for x in p.read_text().splitlines()] for p in sorted(d.glob("*.runs"))}


def csv_text(p: Path) -> str:
    return p.read_text() if p.exists() else ""


from executor_jobs import toy_grid, toy_setup  # noqa: E402

from medsyn.executor import JobsFailed, LocalExecutor, RayExecutor  # noqa: E402

LOG: list = []
log = LOG.append


@scenario
def local():
    d = WORK / "local"
    t0 = time.time()
    table = LocalExecutor(log=log).run(toy_grid(d), d / "jobs.csv")
    return dict(
        seconds=round(time.time() - t0, 2),
        files=files(d),
        jobs_csv=csv_text(d / "jobs.csv"),
        summaries=dict(zip(table.job, table.summary)),
    )


t0 = time.time()
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

cluster = Cluster(
    initialize_head=True,
    head_node_args=dict(num_cpus=0, num_gpus=0, object_store_memory=STORE, include_dashboard=False),
)
workers = [cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=STORE) for _ in range(2)]
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
RESULTS["cluster"] = dict(
    seconds=round(time.time() - t0, 1),
    address=cluster.address,
    workers=[w.node_id[:8] for w in workers],
    node_ips=sorted({n["NodeManagerAddress"] for n in ray.nodes()}),
)
save()


@scenario
def grid():
    d = WORK / "ray"
    setup_log = WORK / "setup.log"
    t0 = time.time()
    ex = RayExecutor(setup=functools.partial(toy_setup, str(setup_log)), poll=0.2, log=log)
    table = ex.run(toy_grid(d), d / "jobs.csv")
    return dict(
        seconds=round(time.time() - t0, 2),
        summaries=dict(zip(table.job, table.summary)),
        files=files(d),
        jobs_csv=csv_text(d / "jobs.csv"),
        runs=runs(d),
        setup=[json.loads(x) for x in setup_log.read_text().splitlines()],
    )


@scenario
def failure():
    d = WORK / "fail"
    try:
        RayExecutor(setup=None, poll=0.2, log=log).run(toy_grid(d, seconds=0.1, fail="synthetic/fold0"), d / "jobs.csv")
        err = None
    except JobsFailed as e:
        err = dict(type=type(e).__name__, message=str(e), failed=list(e.failed), skipped=e.skipped)
    return dict(error_raised=err, files=files(d), jobs_csv=csv_text(d / "jobs.csv"), runs=runs(d))


DRIVER = """
import sys
from pathlib import Path
from executor_jobs import toy_grid
from medsyn.executor import RayExecutor
d = Path(sys.argv[1])
RayExecutor(address=sys.argv[2], setup=None, poll=0.2).run(toy_grid(d, seconds=1.0), d / "jobs.csv")
"""


@scenario
def driver():
    d, steps = WORK / "driver", []
    for hook in ("executor:job_done:INT@2", "executor:job_done:KILL@2", ""):
        p = subprocess.run(
            [sys.executable, "-c", DRIVER, str(d), cluster.address],
            env={**os.environ, "MEDSYN_TEST_HOOK": hook},
            capture_output=True,
            text=True,
            timeout=120,
        )
        at_exit = files(d)
        time.sleep(2.0)  # a cancelled job (or one of a killed driver) must not write afterwards
        steps.append(
            dict(
                hook=hook,
                rc=p.returncode,
                err=p.stderr[-2000:],
                out=p.stdout[-3000:],
                jobs_csv=csv_text(d / "jobs.csv"),
                files_at_exit=sorted(at_exit),
                files_later=sorted(files(d)),
            )
        )
    return dict(steps=steps, files=files(d), runs=runs(d))


@scenario
def node_loss():
    d = WORK / "node"
    jobs = toy_grid(d, seconds=0.2)
    slow = next(j for j in jobs if j.name == "cell/fold0/0")
    slow.kwargs["seconds"] = 8.0
    marker, killed = Path(slow.kwargs["out"] + ".runs"), {}

    def killer():
        deadline = time.time() + 90
        while time.time() < deadline and not marker.exists():
            time.sleep(0.1)
        time.sleep(1.0)
        node = json.loads(marker.read_text().splitlines()[0])["node"]
        victim = next(w for w in workers if w.node_id.startswith(node))
        cluster.remove_node(victim, allow_graceful=False)
        killed.update(node=node, t=time.time())

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    RayExecutor(setup=None, poll=0.2, max_retries=2, log=log).run(jobs, d / "jobs.csv")
    th.join(5)
    return dict(killed=killed, files=files(d), jobs_csv=csv_text(d / "jobs.csv"), runs=runs(d))


RESULTS["log"] = LOG
save()
ray.shutdown()
cluster.shutdown()
