"""Integration tests of medsyn.train: real-data training, resume equivalence, time budget, the CLI and the benchmark."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from medsyn.bench import bench_train
from medsyn.core import seed_everything
from medsyn.data import toy_dataset
from medsyn.networks import generator_from_checkpoint, load_checkpoint
from medsyn.train import train_gan

TINY = dict(channel_base=256, channel_max=32, z_dim=32, w_dim=32, mapping_layers=2)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("data") / "toy", n=16, res=32)


@pytest.mark.parametrize("cfg", ["joint", "mask", "cond"])
def test_resume_is_bit_exact(toy, tmp_path, cfg):
    "k steps straight == k/2 steps, stop, resume, k/2 steps (G, D, G_ema, optimizers, ADA state)."
    kw = dict(kind=cfg, batch=4, progress=False, metric_n=8, grid_n=2, ada_kimg=0.1, **TINY)
    a = train_gan(toy, tmp_path / "a", kimg=0.032, **kw)
    train_gan(toy, tmp_path / "b", kimg=0.016, **kw)
    b = train_gan(toy, tmp_path / "b", kimg=0.032, **kw)
    ca, cb = load_checkpoint(a / "network-last.pt"), load_checkpoint(b / "network-last.pt")
    assert ca["cur_nimg"] == cb["cur_nimg"] == 32
    for k in ("G", "D", "G_ema"):
        for name in ca[k]:
            assert torch.equal(ca[k][name], cb[k][name]), f"{cfg}: {k}.{name} differs after resume"
    assert ca["augment"] == cb["augment"]
    assert torch.equal(ca["pl_mean"], cb["pl_mean"])
    sa, sb = pd.read_csv(a / "stats.csv"), pd.read_csv(b / "stats.csv")
    assert np.allclose(sa.loss_G.values[-2:], sb.loss_G.values[-2:])


def test_time_budget_stops_cleanly(toy, tmp_path, capsys):
    # What is checked is the stop (its reason, a checkpoint, a resumable run), not a wall time: a loaded machine may
    # take longer for the same steps.
    out = train_gan(toy, tmp_path / "run", kimg=1000, time_budget=5, batch=4, progress=False, metric_n=8, **TINY)
    ck = load_checkpoint(out / "network-last.pt")
    assert 0 < ck["cur_nimg"] < 1_000_000
    assert "time budget of 5 s reached; rerun the same command to continue" in capsys.readouterr().err
    # the run can be continued
    out = train_gan(toy, tmp_path / "run", kimg=1000, time_budget=3, batch=4, progress=False, metric_n=8, **TINY)
    assert load_checkpoint(out / "network-last.pt")["cur_nimg"] >= ck["cur_nimg"]


def test_unknown_option_is_a_clear_error(toy, tmp_path):
    from medsyn.core import MedsynError

    with pytest.raises(MedsynError, match="unknown training option"):
        train_gan(toy, tmp_path / "x", kimg=0.004, progress=False, learning_rate=1)


def test_cli_train_with_overrides(toy, tmp_path, run_medsyn):
    res = run_medsyn(
        "train",
        "--data",
        str(toy),
        "--cfg",
        "mask",
        "--kimg",
        "0.008",
        "--outdir",
        str(tmp_path / "run"),
        "--batch",
        "4",
        "--no-progress",
        "--set",
        "channel_base=256",
        "--set",
        "channel_max=32",
        "--set",
        "z_dim=32",
        "--set",
        "w_dim=32",
        "--set",
        "metric_n=8",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    ck = load_checkpoint(tmp_path / "run" / "network-last.pt")
    assert ck["gan_config"]["kind"] == "mask" and ck["gan_config"]["channel_base"] == 256 and ck["cur_nimg"] == 8


def test_bench_train_prints_one_json(capsys):
    bench_train(
        [
            "--res",
            "32",
            "--batch",
            "4",
            "--channel-base",
            "256",
            "--channel-max",
            "32",
            "--img-channels",
            "2",
            "--num-labels",
            "3",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--impl",
            "ref",
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    r = json.loads(out[0])
    for k in ("ms_per_step", "img_per_s", "sec_per_kimg", "peak_mem_mb", "config"):
        assert k in r
    assert r["config"]["channel_base"] == 256 and r["img_per_s"] > 0


def test_bench_train_compares_impls():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from medsyn.bench import bench_train; sys.exit(bench_train(sys.argv[1:]))",
            "--res",
            "16",
            "--batch",
            "4",
            "--channel-base",
            "128",
            "--channel-max",
            "16",
            "--img-channels",
            "1",
            "--num-labels",
            "2",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--impl",
            "ref,cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [x["impl"] for x in r["results"]] == ["ref", "cpu"]
    assert r["results"][0]["speedup_vs_ref"] == 1.0
    assert "ms_per_step" in r["results"][1] or "error" in r["results"][1]


@pytest.mark.slow
def test_short_training_on_the_bundled_dataset(tmp_path):
    "cpu64 joint on the real default dataset: losses stay finite, G output changes, a selection metric is logged."
    from medsyn.data import default_dataset

    data = default_dataset(64)
    out = train_gan(
        data, tmp_path / "run", kind="joint", kimg=0.048, seed=0, progress=False, metric_n=64, time_budget=100
    )
    stats = pd.read_csv(out / "stats.csv")
    assert len(stats) >= 2 and np.isfinite(stats[["loss_G", "loss_D"]].values).all()
    assert np.isfinite(stats.metric.dropna().values).all() and len(stats.metric.dropna()) >= 1
    ck = load_checkpoint(out / "network-last.pt")
    assert ck["cur_nimg"] > 0
    G, gcfg = generator_from_checkpoint(ck, "G")
    seed_everything(0)  # the same initialization train_gan used
    from medsyn.networks import build_networks

    G0, _ = build_networks(gcfg)
    z = torch.randn(4, gcfg.z_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (G(z, noise_mode="const") - G0.eval()(z, noise_mode="const")).abs().mean().item()
    assert diff > 1e-3, diff
    assert (out / "network-best.pt").exists() and list(out.glob("grid-*kimg.png"))


def test_precision_is_recorded_and_kept_on_resume(toy, tmp_path):
    "The run stores the precision it resolved to; a resume with 'auto' keeps it, an explicit other one is refused."
    from medsyn.core import MedsynError

    kw = dict(kind="joint", batch=4, progress=False, metric_n=8, grid_n=2, **TINY)
    run = train_gan(toy, tmp_path / "run", kimg=0.008, precision="fp32", **kw)
    ck = load_checkpoint(run / "network-last.pt")
    assert ck["gan_config"]["precision"] == "fp32"
    assert json.loads((run / "config.json").read_text())["gan_config"]["precision"] == "fp32"
    train_gan(toy, run, kimg=0.016, **kw)  # default 'auto': keeps fp32
    ck = load_checkpoint(run / "network-last.pt")
    assert ck["cur_nimg"] == 16 and ck["gan_config"]["precision"] == "fp32"
    with pytest.raises(MedsynError, match="precision: run 'fp32', now 'bf16'"):
        train_gan(toy, run, kimg=0.024, precision="bf16", **kw)
    auto = train_gan(toy, tmp_path / "auto", kimg=0.008, **kw)  # a fresh run records a concrete precision
    assert load_checkpoint(auto / "network-last.pt")["gan_config"]["precision"] in ("fp32", "bf16")


def _disc_pair(res=16):
    """One real pair: a disc (label 1) inside a ring (label 2), image intensities -0.5 / 0.8 / 0.2 on background / disc
    / ring."""
    yy, xx = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    r = ((yy - res / 2 + 0.5) ** 2 + (xx - res / 2 + 0.5) ** 2).sqrt()
    mask = torch.where(r < res / 5, 1, torch.where(r < res / 3, 2, 0))
    image = torch.tensor([-0.5, 0.8, 0.2])[mask][None, None]
    return image.repeat(4, 1, 1, 1), mask[None].repeat(4, 1, 1)


@pytest.mark.parametrize("weight", [0.0, 50.0])
def test_recon_term_pulls_cond_images_to_their_real_images(weight):
    """cond + recon_weight: the L1 term is part of G's loss and G(z, real mask) approaches that mask's real image within
    40
    steps; without the term no L1 is computed and the images stay further away. (Measured after the data-parallel step,
    seeds 0-2, ratio after/before: 0.57 / 0.43 / 0.52 with the term, 0.53 / 0.60 / 0.57 without; before it 0.46 / 0.41 /
    0.56
    with the term: at this size the term's effect is within seed noise.)"""
    from medsyn.networks import gan_config, mask_to_onehot, split_output
    from medsyn.train import GANTrainer, train_config

    seed_everything(0)
    gcfg = gan_config("cpu64", kind="cond", resolution=16, img_channels=1, num_labels=3, precision="fp32", **TINY)
    tr = GANTrainer(gcfg, train_config("cpu64", batch=4, augment="none", recon_weight=weight))
    image, mask = _disc_pair()
    cond = mask_to_onehot(mask, 3)

    def l1():
        with torch.no_grad():
            return (split_output(tr.G(torch.randn(4, gcfg.z_dim), cond), gcfg)[0] - image).abs().mean().item()

    before = l1()
    stats = [tr.step(image, mask) for _ in range(40)]
    after = l1()
    if weight:  # the term is in G's loss (softplus >= 0), and the images move toward the real ones
        assert all("recon_l1" in s and s["loss_G"] >= weight * s["recon_l1"] for s in stats), stats[:2]
        assert after < 0.65 * before, (before, after)
    else:
        assert all("recon_l1" not in s for s in stats) and after > 0.5 * before, (before, after)
