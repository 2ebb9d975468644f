"""`medsyn bench quality`: quality of each study variant's pairs against GAN training minutes, at CI size."""

import json

import pandas as pd
import pytest
import torch


@pytest.mark.slow
def test_bench_quality_scores_every_variant_at_every_step(run_medsyn, tmp_path):
    out = tmp_path / "bq"
    args = [
        "bench",
        "quality",
        "--out",
        str(out),
        "--profile",
        "ci",
        "--variants",
        "joint",
        "--variants",
        "warped+cond",
        "--minutes",
        "0.05",
        "--minutes",
        "0.1",
        # the bench's mechanics on the template slabs (one channel, 10 subjects: the cost CI was sized for); the
        # default simulated cohort's quality is the study's business (tests/test_study.py)
        "--set",
        "dataset=mni152",
    ]
    res = run_medsyn(*args, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    t = pd.read_csv(out / "tables" / "quality_vs_minutes.csv")
    assert (out / "figures" / "quality_vs_minutes.png").stat().st_size > 0
    syn = t[t.variant != "real"]
    assert set(syn.variant) == {"joint", "warped+cond"} and set(syn.comparison) == {
        "synthetic vs real train",
        "synthetic vs held-out",
    }
    assert set(t[t.variant == "real"].comparison) == {"real train vs held-out"}
    # two training steps per variant, each later than the one before; the GAN really trained in between
    for v, g in syn.groupby("variant"):
        steps = sorted(g.minutes.unique())
        assert len(steps) == 2 and steps[0] > 0 and steps[1] > steps[0], (v, steps)
        assert g[g.minutes == steps[1]].kimg_trained.iloc[0] > g[g.minutes == steps[0]].kimg_trained.iloc[0] > 0
        assert (g.kimg > 0).all() and (g.kimg <= g.kimg_trained).all()  # the snapshot used is one the run reached
    prec = syn[syn.metric == "domain_pr/precision"].value
    assert len(prec) == 8 and prec.between(0, 1).all()
    # warped+cond masks are the real training masks (lightly deformed): their label histogram stays close to the real
    # one
    tv = syn[(syn.metric == "mask_stats/label_hist_tv") & (syn.comparison == "synthetic vs real train")]
    assert (tv[tv.variant == "warped+cond"].value < 0.1).all()
    assert {r["variant"] for r in summary["rows"]} == {"real", "joint", "warped+cond"}
    # a second run refuses to mix with the first one's GAN runs unless told to start over
    again = run_medsyn(*args, timeout=300)
    assert again.returncode != 0 and "--force" in again.stderr
    # a tagged bench in the same OUT reuses its real-only U-Net; --set and --gan-seed reach its GAN runs
    unets = {p: p.stat().st_mtime_ns for p in out.rglob("unet.pt")}
    tagged = run_medsyn(
        "bench",
        "quality",
        "--out",
        str(out),
        "--profile",
        "ci",
        "--variants",
        "warped+cond",
        "--minutes",
        "0.05",
        "--tag",
        "fp32-s7",
        "--gan-seed",
        "7",
        "--set",
        'gan_overrides={"metric": "stats", "precision": "fp32"}',
        "--set",
        "dataset=mni152",
        timeout=600,
    )
    assert tagged.returncode == 0, tagged.stdout[-3000:] + tagged.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("unet.pt")} == unets
    run = json.loads((out / "bench-fp32-s7" / "cond_fold0" / "config.json").read_text())
    assert run["seed"] == 7 and run["gan_config"]["precision"] == "fp32", run
    t2 = pd.read_csv(out / "tables" / "quality_vs_minutes-fp32-s7.csv")
    assert set(t2.tag) == {"fp32-s7"} and set(t2.gan_seed) == {7} and set(t2.variant) == {"real", "warped+cond"}
    assert (out / "figures" / "quality_vs_minutes-fp32-s7.png").stat().st_size > 0
    assert pd.read_csv(out / "tables" / "quality_vs_minutes.csv").equals(t)  # the untagged bench's table is untouched


def test_auto_on_a_cpu_without_bf16_is_the_explicit_fp32_step(monkeypatch):
    """On a CPU without native bf16 (flags faked), precision auto builds and runs exactly the fp32 step: same JSON
    settings,
    same modules and settings, same weights, bit-identical outputs and the same aten calls."""
    import medsyn.bench as B
    import medsyn.networks as N

    no_bf16 = lambda cpuinfo=None: []
    monkeypatch.setattr(N, "cpu_bf16_flags", no_bf16)
    monkeypatch.setattr(B, "cpu_bf16_flags", no_bf16)
    arch = dict(
        kind="cond",
        res=32,
        batch=4,
        channel_base=512,
        channel_max=32,
        z_dim=32,
        w_dim=32,
        mapping_layers=2,
        img_channels=2,
        num_labels=3,
        device="cpu",
        impl="auto",
    )
    built = {p: B.bench_step(precision=p, **arch) for p in ("auto", "fp32")}
    (sa, ia), (sb, ib) = built["auto"], built["fp32"]
    ta, tb = ia.pop("_trainer"), ib.pop("_trainer")
    assert ia.pop("precision_requested") == "auto" and ib.pop("precision_requested") == "fp32"
    assert ia == ib and ia["precision"] == "fp32" and ia["lowp_resolution"] is None

    def settings(m):
        return [
            (
                n,
                type(x).__name__,
                sorted((k, repr(v)) for k, v in vars(x).items() if not k.startswith("_") and k != "training"),
            )
            for n, x in m.named_modules()
        ]

    for a, b in ((ta.G, tb.G), (ta.D, tb.D)):
        assert settings(a) == settings(b)
        sda, sdb = a.state_dict(), b.state_dict()
        assert sda.keys() == sdb.keys() and all(
            torch.equal(sda[k], sdb[k]) and sda[k].dtype == sdb[k].dtype for k in sda
        )
    z = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    cond = (
        torch.nn.functional.one_hot(torch.randint(0, 3, (4, 32, 32), generator=torch.Generator().manual_seed(2)), 3)
        .permute(0, 3, 1, 2)
        .float()
    )
    with torch.no_grad():
        assert torch.equal(ta.G(z, cond, noise_mode="const"), tb.G(z, cond, noise_mode="const"))
    sa()
    sb()  # warm-up: the first step of a process also allocates caches
    assert B.step_signature(sa) == B.step_signature(sb)
