"""Issue #30: one GAN trained by several processes. Two gloo ranks (on the loopback of a private network namespace that
each test makes with `unshare -n`) against one process with the same batch_gpu and accumulation; the three launch forms
(`--nproc`, torchrun's and SLURM's environments); a rank that dies; SIGTERM; resume after a kill and with another number
of processes; the stale build lock of the compiled ops."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from medsyn.core import MedsynError
from medsyn.data import toy_dataset
from medsyn.networks import load_checkpoint

TINY = dict(channel_base=256, channel_max=32, z_dim=32, w_dim=32, mapping_layers=2)
# R1 and path length every 2nd step (both in steps 1 and 3), ADA (also for cond) updating p every step
SETTINGS = dict(
    metric="stats",
    metric_n=8,
    grid_n=2,
    ada_kimg=0.1,
    ada_interval=1,
    r1_interval=2,
    pl_interval=2,
    augment="ada",
    **TINY,
)
SETS = [x for k, v in SETTINGS.items() for x in ("--set", f"{k}={v}")]
# 2 shared cores: one OpenMP thread per process, sleeping when idle; collectives give up after 60 s instead of hanging
ENV = dict(
    OMP_NUM_THREADS="1",
    OMP_WAIT_POLICY="PASSIVE",
    MASTER_ADDR="127.0.0.1",
    GLOO_SOCKET_IFNAME="lo",
    MEDSYN_DIST_TIMEOUT="60",
)
LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_PORT",
    "MEDSYN_TEST_HOOK",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_JOB_NODELIST",
    "SLURM_JOB_ID",
    "SLURM_NODELIST",
    "SLURM_STEP_NODELIST",
)
CLI = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from medsyn.cli import main; sys.exit(main())"
)


def _netns_ok() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    try:
        return (
            subprocess.run(
                ["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


NETNS = _netns_ok()
needs_netns = pytest.mark.skipif(
    not NETNS,
    reason="several ranks need a private network namespace (`unshare -n` + `ip link set lo "
    "up`, as root); this machine cannot make one, and the tests stay off real networks",
)

# Runs inside the namespace: start one `medsyn` process per environment, wait (bounded), report exit codes and stderr.
DRIVER = """
import json, os, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
spec = json.loads(sys.argv[1])
procs = [subprocess.Popen([sys.executable, "-c", spec["code"], *spec["args"]], env={**os.environ, **e},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for e in spec["envs"]]
out = []
for p in procs:
    try: o, e = p.communicate(timeout=spec["timeout"])
    except subprocess.TimeoutExpired: p.kill(); o, e = p.communicate(); e += "\\nTIMEOUT"
    out.append(dict(rc=p.returncode, err=e[-3000:]))
print(json.dumps(out))
"""


def run_processes(args, envs, timeout=240) -> list[dict]:
    "Run `medsyn ARGS` once per environment in `envs`, all in one fresh network namespace; `[{rc, err}]` per process."
    base = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    spec = json.dumps(dict(code=CLI, args=[str(a) for a in args], envs=envs, timeout=timeout))
    r = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", DRIVER, spec],
        capture_output=True,
        text=True,
        env={**base, **ENV},
        timeout=timeout + 60,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def one(args, netns=True, env=None, timeout=240) -> dict:
    "`medsyn ARGS` as one process (in its own network namespace when `netns`)."
    if netns:
        return run_processes(args, [env or {}], timeout)[0]
    base = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    r = subprocess.run(
        [sys.executable, "-c", CLI, *map(str, args)],
        capture_output=True,
        text=True,
        env={**base, **ENV, **(env or {})},
        timeout=timeout,
    )
    return dict(rc=r.returncode, err=r.stderr[-3000:])


def train_args(data, run, kimg, kind="joint", *extra):
    """A tiny run: global batch 4 in micro-batches of 2 (one process: 2 accumulation rounds; two: 1 each), snapshots
    every 2 steps."""
    return [
        "train",
        "--data",
        data,
        "--kind",
        kind,
        "--kimg",
        kimg,
        "--outdir",
        run,
        "--batch",
        "4",
        "--batch-gpu",
        "2",
        "--gamma",
        "1",
        "--impl",
        "ref",
        "--precision",
        "fp32",
        "--snap",
        "0.008",
        "--no-progress",
        *SETS,
        *extra,
    ]


def max_diff(a: dict, b: dict) -> dict:
    "max |a - b| over the parameters and buffers of G, D and G_ema, and whether they are bit-identical."
    out = {}
    for k in ("G", "D", "G_ema"):
        assert a[k].keys() == b[k].keys()
        out[k] = max(float((a[k][n].double() - b[k][n].double()).abs().max()) for n in a[k])
        out[k + "_equal"] = all(torch.equal(a[k][n], b[k][n]) for n in a[k])
    return out


def assert_same_run(a: dict, b: dict, what: str, tol: float = 0.0) -> dict:
    d = max_diff(a, b)
    print(
        f"{what}: max |delta| G {d['G']:.3g}, D {d['D']:.3g}, G_ema {d['G_ema']:.3g}; p {a['augment']['p']} vs "
        f"{b['augment']['p']}"
    )
    assert a["cur_nimg"] == b["cur_nimg"], (a["cur_nimg"], b["cur_nimg"])
    for k in ("G", "D", "G_ema"):
        assert d[k] <= tol, f"{what}: {k} differs by {d[k]}"
    assert a["augment"] == b["augment"] and a["augment"]["r_t"] is not None, (
        a["augment"],
        b["augment"],
    )  # p and ADA's statistic
    assert torch.allclose(a["pl_mean"], b["pl_mean"], rtol=0, atol=tol) and float(a["pl_mean"]) > 0
    return d


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("data") / "toy", n=16, res=32)


@pytest.fixture(scope="module")
def joint_pair(toy, tmp_path_factory):
    "Three steps of a joint GAN: one process (2 accumulation rounds) and `medsyn train --nproc 2` (2 gloo ranks)."
    root = tmp_path_factory.mktemp("joint")
    r1 = one(train_args(toy, root / "one", "0.012"), netns=False)
    assert r1["rc"] == 0, r1["err"]
    t0 = time.time()
    r2 = one(train_args(toy, root / "two", "0.012", "joint", "--nproc", "2"))
    assert r2["rc"] == 0, r2["err"]
    print(f"--nproc 2 run: {time.time() - t0:.0f} s")
    return root


@needs_netns
def test_two_ranks_equal_one_process_joint(joint_pair):
    a, b = (load_checkpoint(joint_pair / r / "network-last.pt") for r in ("one", "two"))
    assert (a["world_size"], b["world_size"], len(b["rng_ranks"]), b["batch_gpu"]) == (1, 2, 2, 2)
    assert_same_run(a, b, "joint, 2 ranks vs 1 process")
    assert len(list((joint_pair / "two").glob("events.out.tfevents*"))) == 1  # rank 1 logged nothing


@needs_netns
def test_two_ranks_equal_one_process_cond_under_torchrun_env(toy, tmp_path):
    "cond, 2 ranks started as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) vs one process."
    r1 = one(train_args(toy, tmp_path / "one", "0.012", "cond"), netns=False)
    assert r1["rc"] == 0, r1["err"]
    envs = [dict(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_PORT="29511") for r in range(2)]
    res = run_processes(train_args(toy, tmp_path / "two", "0.012", "cond"), envs)
    assert [r["rc"] for r in res] == [0, 0], [r["err"] for r in res]
    assert "run folder" not in res[1]["err"]
    a, b = (load_checkpoint(tmp_path / r / "network-last.pt") for r in ("one", "two"))
    assert b["world_size"] == 2
    assert_same_run(a, b, "cond, 2 ranks vs 1 process")


@needs_netns
def test_dead_rank_sigterm_and_resume_with_any_process_count(toy, joint_pair, tmp_path):
    """From the 2-rank joint run at 3 steps: (a) rank 1 is SIGKILLed inside step 5 -> the launcher names it, rank 0
    stops,
    step 4's checkpoint stays; (b) resumed as SLURM tasks, rank 0 gets SIGTERM inside step 5 -> both finish it and save;
    (c) that 2-rank checkpoint resumed in one process to step 6 equals the uninterrupted 2-rank run, bit for bit."""
    for name in ("killed", "straight"):
        shutil.copytree(joint_pair / "two", tmp_path / name)
    t0 = time.time()
    r = one(
        train_args(toy, tmp_path / "killed", "0.024", "joint", "--nproc", "2"),
        env=dict(MEDSYN_TEST_HOOK_RANK1="train:step:KILL@2"),
        timeout=240,
    )
    took = time.time() - t0
    assert r["rc"] == 2 and "rank 1 of 2" in r["err"] and "killed by SIGKILL" in r["err"], r["err"]
    assert "TIMEOUT" not in r["err"] and took < 200, (
        took
    )  # no hang: rank 0 stopped on its own (grace 30 s, timeouts 60 s)
    print(f"rank 1 killed: the run ended after {took:.0f} s (process start-up included)")
    assert load_checkpoint(tmp_path / "killed" / "network-last.pt")["cur_nimg"] == 16
    slurm = [
        dict(
            SLURM_PROCID=str(k),
            SLURM_NTASKS="2",
            SLURM_LOCALID=str(k),
            SLURM_JOB_NODELIST="localhost",
            SLURM_JOB_ID="4242",
            **({"MEDSYN_TEST_HOOK": "train:step:TERM@1"} if k == 0 else {}),
        )
        for k in range(2)
    ]
    res = run_processes(train_args(toy, tmp_path / "killed", "0.024"), slurm)
    assert [x["rc"] for x in res] == [130, 130], [x["err"] for x in res]
    assert "SIGTERM" in res[0]["err"]
    ck = load_checkpoint(tmp_path / "killed" / "network-last.pt")
    assert (ck["cur_nimg"], ck["world_size"], len(ck["rng_ranks"])) == (20, 2, 2)
    r = one(train_args(toy, tmp_path / "killed", "0.024"), netns=False)  # one process continues the 2-rank run
    assert r["rc"] == 0, r["err"]
    r = one(train_args(toy, tmp_path / "straight", "0.024", "joint", "--nproc", "2"))
    assert r["rc"] == 0, r["err"]
    assert_same_run(
        load_checkpoint(tmp_path / "straight" / "network-last.pt"),
        load_checkpoint(tmp_path / "killed" / "network-last.pt"),
        "2 ranks killed, resumed by SLURM tasks, SIGTERM, resumed in 1 process vs 2 ranks uninterrupted",
    )


def test_mismatched_world_size_is_refused(toy, tmp_path, monkeypatch):
    from medsyn.train import train_gan

    for k in LAUNCHER_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MedsynError, match="--nproc 3, but the launcher"):
        train_gan(toy, tmp_path / "run", kimg=0.004, nproc=3, progress=False)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(MedsynError, match="RANK=2 with WORLD_SIZE=2"):
        train_gan(toy, tmp_path / "run", kimg=0.004, progress=False)
    assert not (tmp_path / "run").exists()


def test_stale_build_lock_is_a_clear_error_not_a_hang(tmp_path, monkeypatch):
    "A torch build lock left by a killed build: an error naming the folder within the timeout (NVlabs users hung here)."
    from medsyn import ops

    d = tmp_path / "ext"
    d.mkdir()
    (d / "lock").touch()  # a torch lock file, and nothing changed in the folder for a while
    monkeypatch.setenv("MEDSYN_BUILD_LOCK_TIMEOUT", "1")
    time.sleep(1.2)
    if not ops.torch_lock_is_a_file():  # this torch holds an flock on it: a leftover file must not block
        with ops.build_lock(d):
            pass
        monkeypatch.setattr(ops, "torch_lock_is_a_file", lambda: True)  # from here: as older torch (FileBaton) behaves
    t0 = time.time()
    with pytest.raises(MedsynError, match=f"{d}: holds the lock file 'lock'.*rm {d / 'lock'}"):
        ops._build("cpu", build_dir=d)
    assert time.time() - t0 < 10
    # medsyn's own lock never goes stale: a builder killed while holding it frees it (the kernel drops an flock)
    (d / "lock").unlink()
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, "
        "fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(d / ".medsyn-build.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(0.6)
        with pytest.raises(MedsynError, match="another process holds the build lock"):
            with ops.build_lock(d, timeout=0.5):
                pass
    finally:
        holder.kill()
        holder.wait()
    with ops.build_lock(d, timeout=1):
        pass
