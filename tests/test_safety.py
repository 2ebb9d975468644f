"""Issue #18: nothing a user owns is ever destroyed. Safe --overwrite, atomic replacement under SIGKILL / SIGINT,
stale leftovers cleaned, train runs resumed / refused / moved aside, typed --set, and bit-identical resume after
Ctrl-C."""

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medsyn.cli import main
from medsyn.core import MedsynError, medsyn_made
from medsyn.data import load_canonical, make_synthetic_msd, toy_dataset
from medsyn.networks import load_checkpoint
from medsyn.train import StyleGAN2Loss, train_gan

TINY = dict(channel_base=256, channel_max=32, z_dim=32, w_dim=32, mapping_layers=2)
TINY_SETS = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
# metric=stats: the snapshot metric must not depend on whether Inception weights sit in the cache
RUN_KW = dict(kind="joint", batch=4, progress=False, metric="stats", metric_n=8, grid_n=2, ada_kimg=0.1, **TINY)


def tree_digest(root: Path) -> dict:
    "Every file under `root` with its SHA-256: equal digests mean the folder is intact."
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def cli(capsys, *args):
    "Run `medsyn ARGS` in this process; returns (exit code, stderr)."
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def subprocess_medsyn(*args, hook=None, cwd=None):
    "Run `medsyn ARGS` in a fresh process, optionally with a MEDSYN_TEST_HOOK (POINT:SIGNAL[@N])."
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MEDSYN_TEST_HOOK", None)
    if hook:
        env["MEDSYN_TEST_HOOK"] = hook
    # Ctrl-C as in a terminal: a background job (CI, `cmd &`) inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler, so the child starts from the interpreter's default one.
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from medsyn.cli import main; sys.exit(main())"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_synthetic_msd(tmp_path_factory.mktemp("src") / "msd", n_subjects=3)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("data") / "toy", n=16, res=32)


def prepare_args(src, out, *extra):
    return ["prepare", src, "--out", out, "--res", "16", "--quiet", *extra]


def train_args(toy, run, kimg, *extra):
    "`medsyn train` arguments of the tiny toy runs (the CLI twin of RUN_KW)."
    return [
        "train",
        "--data",
        toy,
        "--kimg",
        kimg,
        "--outdir",
        run,
        "--batch",
        "4",
        "--no-progress",
        "--set",
        "metric=stats",
        "--set",
        "metric_n=8",
        "--set",
        "grid_n=2",
        *extra,
        *TINY_SETS,
    ]


# --- 1. --overwrite replaces only medsyn's own output, never the source ----------------------------------------------


@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_overwrite_refuses_the_source(src, tmp_path, capsys, where):
    before = tree_digest(src)
    out = {"same": src, "inside": src / "out", "containing": src.parent}[where]
    rc, err = cli(capsys, *prepare_args(src, out, "--overwrite"))
    assert rc == 2 and "source" in err and str(out) in err, err
    assert tree_digest(src) == before  # not one file of the source changed
    assert not (src / "out").exists()


def test_overwrite_refuses_a_folder_medsyn_did_not_make(src, tmp_path, capsys):
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "todo.txt").write_text("mine")
    (notes / "sub" / "a.txt").write_text("also mine")
    before = tree_digest(notes)
    rc, err = cli(capsys, *prepare_args(src, notes, "--overwrite"))
    assert rc == 2 and "not a dataset made by medsyn" in err and str(notes) in err, err
    assert tree_digest(notes) == before
    rc, err = cli(capsys, "generate", "--ckpt", tmp_path / "nothing.pt", "--out", notes, "--overwrite", "--n", "2")
    assert rc == 2 and "not a dataset made by medsyn" in err, err  # generate shares the check, before loading
    assert tree_digest(notes) == before


def test_overwrite_replaces_a_medsyn_dataset(src, tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli(capsys, *prepare_args(src, out))[0] == 0
    first = load_canonical(out).meta["created"]
    assert medsyn_made(out, "dataset")
    assert cli(capsys, *prepare_args(src, out, "--overwrite", "--seed", "1"))[0] == 0
    assert load_canonical(out).meta["created"] >= first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no .old / .partial left behind


# --- 1+4. atomic replacement under SIGKILL and SIGINT, leftovers cleaned
# -----------------------------------------------


def test_sigkill_between_the_renames_is_recovered(src, tmp_path):
    out = tmp_path / "ds"
    assert subprocess_medsyn(*prepare_args(src, out)).returncode == 0
    old = tree_digest(out)
    r = subprocess_medsyn(*prepare_args(src, out, "--overwrite", "--seed", "1"), hook="atomic_dir:aside:KILL")
    assert r.returncode == -signal.SIGKILL
    asides = list(tmp_path.glob(".ds.*.old"))
    assert not out.exists() and len(asides) == 1 and tree_digest(asides[0]) == old  # the old dataset is whole, aside
    with pytest.raises(MedsynError, match="interrupted replacement left the earlier one"):
        load_canonical(out)
    r = subprocess_medsyn(*prepare_args(src, out, "--overwrite", "--seed", "1"))
    assert r.returncode == 0, r.stderr
    assert "restored" in r.stderr and "removed" in r.stderr  # old put back, then the stale build removed
    assert len(load_canonical(out)) > 0 and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_sigkill_before_the_swap_keeps_the_old_dataset(src, tmp_path):
    out = tmp_path / "ds"
    assert subprocess_medsyn(*prepare_args(src, out)).returncode == 0
    old = tree_digest(out)
    r = subprocess_medsyn(*prepare_args(src, out, "--overwrite", "--seed", "1"), hook="atomic_dir:built:KILL")
    assert r.returncode == -signal.SIGKILL
    assert tree_digest(out) == old and len(list(tmp_path.glob(".ds.*.partial"))) == 1
    r = subprocess_medsyn(*prepare_args(src, out, "--overwrite", "--seed", "1"))
    assert r.returncode == 0 and "removed" in r.stderr and ".partial" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_sigint_during_the_swap_is_held_until_it_is_done(src, tmp_path):
    out = tmp_path / "ds"
    assert subprocess_medsyn(*prepare_args(src, out)).returncode == 0
    r = subprocess_medsyn(*prepare_args(src, out, "--overwrite", "--seed", "1"), hook="atomic_dir:aside:INT")
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr
    assert "a rerun resumes" not in r.stderr and "never half-written" in r.stderr
    assert len(load_canonical(out)) > 0  # the new one is in, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # and the old one is gone, not both


def test_killed_checkpoint_write_leaves_a_tmp_that_the_next_run_removes(toy, tmp_path):
    run = tmp_path / "run"
    args = train_args(toy, run, "0.008")
    r = subprocess_medsyn(*args, hook="atomic_path:written:KILL@1")  # the first write of the run: config.json
    assert r.returncode == -signal.SIGKILL
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")], list(run.iterdir())
    r = subprocess_medsyn(*args)
    assert r.returncode == 0 and "removed" in r.stderr, r.stderr
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(run / "network-last.pt")["cur_nimg"] == 8


# --- 2. train: resume, refuse, or move aside -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(toy, tmp_path_factory):
    return train_gan(toy, tmp_path_factory.mktemp("runs") / "run", kimg=0.016, **RUN_KW)


def test_no_resume_refuses_a_run_and_replace_moves_it_aside(toy, finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = tree_digest(run)
    base = [
        "train",
        "--data",
        toy,
        "--kimg",
        "0.008",
        "--outdir",
        run,
        "--batch",
        "4",
        "--no-progress",
        "--set",
        "metric=stats",
        "--set",
        "metric_n=8",
        "--set",
        "grid_n=2",
        "--set",
        "ada_kimg=0.1",
        *TINY_SETS,
    ]
    rc, err = cli(capsys, *base, "--no-resume")
    assert rc == 2 and "--no-resume would replace it" in err and "--replace" in err, err
    assert tree_digest(run) == before
    rc, err = cli(capsys, *base, "--replace")
    assert rc == 0, err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and tree_digest(aside[0]) == before and "moved the earlier run" in err
    assert load_checkpoint(run / "network-last.pt")["cur_nimg"] == 8  # a fresh run, not a continuation


def test_resume_with_other_data_or_settings_is_refused_before_writing(toy, finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = tree_digest(run)
    other = toy_dataset(tmp_path / "other", n=12, res=32, seed=1)
    with pytest.raises(MedsynError, match=r"data n_samples: run 16, now 12"):
        train_gan(other, run, kimg=0.032, **RUN_KW)
    with pytest.raises(MedsynError, match=r"gamma: run 0.1, now 1.0"):
        train_gan(toy, run, kimg=0.032, **{**RUN_KW, "gamma": 1.0})
    with pytest.raises(MedsynError, match=r"--seed: run 0, now 3"):
        train_gan(toy, run, kimg=0.032, seed=3, **RUN_KW)
    assert tree_digest(run) == before  # config.json not rewritten, nothing added
    rc, err = cli(
        capsys,
        "train",
        "--data",
        other,
        "--kimg",
        "0.032",
        "--outdir",
        run,
        "--no-progress",
        "--batch",
        "4",
        *TINY_SETS,
    )
    assert rc == 2 and "cannot resume this run with other settings" in err and "data content_sha256" in err, err
    assert tree_digest(run) == before
    out = train_gan(toy, run, kimg=0.032, impl="ref", **RUN_KW)  # same run, other impl: resumes
    assert load_checkpoint(out / "network-last.pt")["cur_nimg"] == 32


def test_train_refuses_a_folder_of_other_files(toy, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text('{"my": "settings"}')
    with pytest.raises(MedsynError, match="not a medsyn training run"):
        train_gan(toy, tmp_path / "mine", kimg=0.008, **RUN_KW)
    assert (tmp_path / "mine" / "config.json").read_text() == '{"my": "settings"}'


# --- 5. --set: every documented field, typed ------------------------------------------------------------------------


def test_set_batch_and_impl_work_and_bad_fields_are_clear(toy, tmp_path, capsys):
    run = tmp_path / "run"
    rc, err = cli(
        capsys,
        "train",
        "--data",
        toy,
        "--kimg",
        "0.008",
        "--outdir",
        run,
        "--no-progress",
        "--set",
        "batch=4",
        "--set",
        "impl=ref",
        "--set",
        "metric=stats",
        "--set",
        "metric_n=8",
        "--set",
        "grid_n=2",
        *TINY_SETS,
    )
    assert rc == 0, err
    ck = load_checkpoint(run / "network-last.pt")
    assert ck["train_config"]["batch"] == 4 and ck["train_config"]["impl"] == "ref"
    for bad, msg in [
        ("gamma=abc", "TrainConfig.gamma must be float"),
        ("batch=2.5", "TrainConfig.batch must be int"),
        ("gama=1", "did you mean gamma"),
        ("num_labels=5", "number of labels"),
        ("augment=fancy", "augment='fancy': choose one of"),
        ("r1_interval=0", "r1_interval=0: must be at least 1"),
        ("channel_base=\"x\"", "GANConfig.channel_base must be int"),
        ("nonsense", "expected FIELD=VALUE"),
    ]:
        out = tmp_path / "bad"
        rc, err = cli(capsys, "train", "--data", toy, "--kimg", "0.008", "--outdir", out, "--set", bad, "--no-progress")
        assert rc == 2 and msg in err and "Traceback" not in err, (bad, err)
        assert not out.exists(), bad  # refused before anything was written
    rc, err = cli(
        capsys,
        "train",
        "--data",
        toy,
        "--kimg",
        "0.008",
        "--outdir",
        tmp_path / "bad",
        "--batch",
        "8",
        "--set",
        "batch=4",
    )
    assert rc == 2 and "disagree" in err


# --- 3. Ctrl-C finishes the step: resume is bit-identical, as after SIGKILL
# ---------------------------------------------


def _assert_same_weights(a, b):
    for k in ("G", "D", "G_ema"):
        for name in a[k]:
            assert torch.equal(a[k][name], b[k][name]), f"{k}.{name} differs"
    assert a["augment"] == b["augment"] and torch.equal(a["pl_mean"], b["pl_mean"])


@pytest.fixture(scope="module")
def straight(toy, tmp_path_factory):
    out = train_gan(toy, tmp_path_factory.mktemp("straight") / "run", kimg=0.032, **RUN_KW)
    return load_checkpoint(out / "network-last.pt")


def test_sigint_inside_a_step_resumes_bit_identically(toy, straight, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSYN_TEST_HOOK", "train:step:INT@3")  # Ctrl-C between Gmain and Dmain of step 3
    with pytest.raises(KeyboardInterrupt):
        train_gan(toy, tmp_path / "run", kimg=0.032, **RUN_KW)
    monkeypatch.delenv("MEDSYN_TEST_HOOK")
    assert load_checkpoint(tmp_path / "run" / "network-last.pt")["cur_nimg"] == 12  # step 3 finished, then saved
    out = train_gan(toy, tmp_path / "run", kimg=0.032, **RUN_KW)
    _assert_same_weights(straight, load_checkpoint(out / "network-last.pt"))


def test_second_ctrl_c_inside_a_step_keeps_the_previous_checkpoint(toy, straight, tmp_path, monkeypatch):
    orig, calls = StyleGAN2Loss.d_main, []

    def two_interrupts(self, *a):
        calls.append(1)
        if len(calls) == 6:  # step 6: after the snapshot at 16 images
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return orig(self, *a)

    monkeypatch.setattr(StyleGAN2Loss, "d_main", two_interrupts)
    with pytest.raises(KeyboardInterrupt):
        train_gan(toy, tmp_path / "run", kimg=0.032, **RUN_KW)
    monkeypatch.setattr(StyleGAN2Loss, "d_main", orig)
    assert load_checkpoint(tmp_path / "run" / "network-last.pt")["cur_nimg"] == 16  # the half step was discarded
    out = train_gan(toy, tmp_path / "run", kimg=0.032, **RUN_KW)
    _assert_same_weights(straight, load_checkpoint(out / "network-last.pt"))


def test_sigkill_inside_a_step_resumes_bit_identically(toy, tmp_path):
    # The reference is an uninterrupted run in a subprocess with the same environment: this process may use
    # another number of threads, and float reductions over other thread counts differ in the last bits.
    assert subprocess_medsyn(*train_args(toy, tmp_path / "straight", "0.032", "--set", "ada_kimg=0.1")).returncode == 0
    run = tmp_path / "run"
    r = subprocess_medsyn(*train_args(toy, run, "0.032", "--set", "ada_kimg=0.1"), hook="train:step:KILL@6")
    assert r.returncode == -signal.SIGKILL
    assert load_checkpoint(run / "network-last.pt")["cur_nimg"] == 16
    assert subprocess_medsyn(*train_args(toy, run, "0.032", "--set", "ada_kimg=0.1")).returncode == 0
    _assert_same_weights(
        load_checkpoint(tmp_path / "straight" / "network-last.pt"), load_checkpoint(run / "network-last.pt")
    )


def test_prepare_ctrl_c_message_does_not_promise_a_resume(src, tmp_path, capsys, monkeypatch):
    import medsyn.data as D

    def interrupted(*a, **k):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(D, "study_samples", interrupted)
    rc, err = cli(capsys, *prepare_args(src, tmp_path / "ds"))
    assert rc == 130 and "a rerun resumes" not in err and "never half-written" in err, err
    assert not (tmp_path / "ds").exists() and not list(tmp_path.iterdir())
