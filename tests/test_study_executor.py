"""Issue #31, phase 2: the study on the executor. Fast: `medsyn study --plan` for the `full` profile (no data),
`--emit slurm|kuberay` against golden files, `--executor ray` without Ray. Slow: one CI-sized grid holding every job
kind of `full` (variants joint, mask+cond and warped+cond, two fractions, two synthetic factors) run with the local
executor, killed mid-study and rerun, and with the ray executor (a local Ray cluster inside a private network
namespace): the same manifests, tables and Dice, and the rerun recomputed none of the jobs finished before the kill."""

import json
import os
import shutil
import subprocess
import time
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "executor"
# the CI grid with every job kind of the `full` profile, as small as it gets: the template slabs (one channel), tiny
# GANs of a few steps, 8 samples per quality set; every job kind, dependency and artefact is still there
TINY_GAN = '{"metric": "stats", "batch": 4, "channel_base": 256, "channel_max": 32, "z_dim": 32, "w_dim": 32}'
GRID = [
    "--profile",
    "ci",
    "--datasets",
    "mni152",
    "--kimg",
    "0.02",
    "--set",
    'variants=["joint","mask+cond","warped+cond"]',
    "--set",
    'controls=["lookup"]',
    "--set",
    "n_quality=8",
    "--set",
    f"gan_overrides={TINY_GAN}",
    "--set",
    "gan_time_budget=3600",  # ci's 60 s budget would cut a GAN by the clock (one that compiles the ops first)
]


def test_plan_of_the_full_profile_reads_no_data(run_medsyn, tmp_path):
    runs = tmp_path / "runs"
    res = run_medsyn("study", "--profile", "full", "--plan", "--s-per-kimg", "30", "--out", str(runs), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    table = pd.read_csv(StringIO(res.stdout.split("\n", 1)[1]), sep=r"\s+").set_index("kind")
    assert table.loc["gan", "jobs"] == 60 and table.loc["gan", "gpu_hours"] == 60 * 5000 * 30 / 3600
    assert (
        table.loc["cell", "jobs"] == 500 and table.loc["quality", "jobs"] == 5 and table.loc["synthetic", "jobs"] == 40
    )
    assert table.loc["total", "critical_path_hours"] == round((5000 * 30 + 2 * 600) / 3600, 3)  # GAN -> set -> cell
    assert not runs.exists()  # nothing prepared, nothing written
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(dict(sec_per_kimg=15.0)))
    res = run_medsyn("study", "--profile", "full", "--plan", "--bench", str(bench), timeout=120)
    assert res.returncode == 0 and " 1250.0 " in res.stdout, res.stdout + res.stderr
    res = run_medsyn("study", "--profile", "full", "--plan", timeout=120)
    assert res.returncode != 0 and "--s-per-kimg" in res.stdout + res.stderr


@pytest.mark.parametrize("kind,golden", [("slurm", "study_cli.sbatch"), ("kuberay", "rayjob.yaml")])
def test_emit_recipe_from_the_command_line(run_medsyn, tmp_path, kind, golden):
    out = tmp_path / golden
    res = run_medsyn(
        "study", "--profile", "full", "--datasets", "/data/brats", "--emit", kind, "--out", str(out), timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert out.read_text() == (FIXTURES / golden).read_text()


def test_emit_set_sizes_the_recipe_and_refuses_unknown_settings(run_medsyn, tmp_path):
    args = ("study", "--profile", "full", "--emit", "slurm")
    res = run_medsyn(*args, "--emit-set", "nodes=4", "--emit-set", "gpus_per_node=8", timeout=120)
    assert res.returncode == 0, res.stderr
    assert "#SBATCH --nodes=4" in res.stdout and "#SBATCH --gpus-per-task=8" in res.stdout
    res = run_medsyn(*args, "--emit-set", "gpus=8", timeout=120)
    assert res.returncode != 0 and "--emit-set ['gpus']" in res.stderr and "gpus_per_node" in res.stderr


def test_ray_executor_without_ray_names_the_extra(run_medsyn, tmp_path):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no module named ray (test)')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT)])}
    res = run_medsyn("study", "--profile", "ci", "--executor", "ray", "--out", str(tmp_path / "r"), env=env)
    assert res.returncode != 0 and 'pip install "medsyn[ray]"' in res.stdout + res.stderr, res.stdout + res.stderr
    assert not (tmp_path / "r" / "default").exists()


def _netns_ok() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    try:
        return subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _study(runs: Path, *extra, netns: bool = False, hook: str = "", timeout: int = 1500):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "RAY_DISABLE_USAGE_STATS": "1",
        "MEDSYN_TEST_HOOK": hook,
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [shutil.which("medsyn") or "medsyn", "study", *GRID, "--out", str(runs), *extra]
    if netns:  # loopback is the only address: Ray's traffic cannot leave 127.0.0.1
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return p, time.time() - t0


TIMING = ("written", "seconds")  # when an artefact was written and how long it took: the only fields that may differ
# (a synthetic set's manifest names its GANs by `checkpoint_fingerprint`, which leaves their wall-clock out)


def _manifests(out: Path) -> dict:
    return {
        str(p.relative_to(out)): {k: v for k, v in json.loads(p.read_text()).items() if k not in TIMING}
        for p in sorted(out.rglob("manifest.json"))
    }


def _tables(out: Path) -> dict:
    return {
        p.name: pd.read_csv(p).drop(columns=["seconds"], errors="ignore")
        for p in sorted((out / "tables").glob("*.csv"))
        if not p.name.startswith("jobs")
    }


# On the template slabs with tiny GANs (GRID) it takes 270 s on an idle 2-core Xeon (2026-12-07: killed local run 27 s,
# rerun 120 s, ray 121 s; identical manifests, tables and dice.csv), which would take CI over the 25 minutes issue #33
# allows, so it runs when asked (MEDSYN_GRID_TEST=1). Before GRID shrank (the simulated cohort, cpu64 GANs) it took
# 15-30 min.
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MEDSYN_GRID_TEST") != "1",
    reason="the CI-sized study grid local vs ray takes ~5 min on 2 cores: run with MEDSYN_GRID_TEST=1",
)
@pytest.mark.skipif(not _netns_ok(), reason="the ray run needs a private network namespace (unshare -n, as root)")
def test_ci_grid_local_killed_rerun_and_ray_give_the_same_results(tmp_path):
    pytest.importorskip("ray")
    # local, its driver (the GAN notebook's kernel: prepare has 4 jobs) killed after its 5th GAN run, then rerun
    local = tmp_path / "local"
    p, t_killed = _study(local, hook="executor:job_done:KILL@5")
    assert p.returncode != 0, p.stdout[-3000:]
    before = pd.read_csv(local / "mni152" / "tables" / "jobs_gan.csv")
    finished = set(before[before.state == "done"].job)
    assert len(finished) == 5 and set(before.state) == {"done", "pending"}, before
    p, t_rerun = _study(local)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    jobs = pd.read_csv(local / "mni152" / "tables" / "jobs.csv").set_index("job")
    assert (jobs.loc[sorted(finished), "state"] == "cached").all()  # finished jobs were not recomputed
    assert (jobs.drop(sorted(finished)).state == "done").all()  # and the rest ran once
    # ray: a local cluster, every job of the grid in one call after prepare, no GPUs on this machine
    ray_runs = tmp_path / "ray"
    p, t_ray = _study(ray_runs, "--executor", "ray", "--set", "gan_gpus=0", netns=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rjobs = pd.read_csv(ray_runs / "mni152" / "tables" / "jobs.csv").set_index("job")
    assert set(rjobs.state) == {"done"} and set(rjobs.index) == {j for j in jobs.index if "real_subset" not in j}
    assert set(rjobs.kind) == {"gan", "synthetic", "cell", "quality"}
    a, b = local / "mni152", ray_runs / "mni152"
    assert _manifests(a) == _manifests(b) and len(_manifests(a)) > 40
    ta, tb = _tables(a), _tables(b)
    assert ta.keys() == tb.keys() and "dice.csv" in ta
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True, obj=name)
    assert (a / "tables" / "dice.csv").read_bytes() == (b / "tables" / "dice.csv").read_bytes()
    kinds = set(pd.read_csv(a / "tables" / "dice.csv").variant)
    assert {"joint", "mask+cond", "warped+cond", "real"} <= kinds
    print(json.dumps(dict(local_killed_s=round(t_killed), local_rerun_s=round(t_rerun), ray_s=round(t_ray))))
