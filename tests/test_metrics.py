"""medsyn.metrics against independent references, hand-computed masks, and the `medsyn evaluate` CLI.

No pretrained weights exist on a CI machine: the Inception/LPIPS loaders are checked with state dicts
built here from randomly initialized architectures (plumbing only, never reported as FID or LPIPS),
and the CLI must report the missing weights as error strings naming the files."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from medsyn import evaluate as E
from medsyn import metrics as M
from medsyn import segment as S
from medsyn.core import MedsynError
from medsyn.data import dataset_hash
from medsyn.weights import INCEPTION_ENV


@pytest.fixture(autouse=True)
def offline_caches(tmp_path, monkeypatch):
    "Empty medsyn and torch hub caches, so no test depends on weights present on the machine."
    monkeypatch.setenv("MEDSYN_CACHE", str(tmp_path / "medsyn-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.delenv(M.LPIPS_ENV, raising=False)


def _trace_sqrt_eigh(s1, s2):
    "Tr sqrt(s1 s2) for PSD matrices via symmetric eigendecompositions only."
    w, v = np.linalg.eigh(s1)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return np.sqrt(np.clip(np.linalg.eigvalsh(a @ s2 @ a), 0, None)).sum()


def _gaussian_pair(rng, n, d):
    x = rng.normal(size=(n, d))
    y = rng.normal(0.2, 1.0, size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    return x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)


@pytest.mark.parametrize("n,d", [(1000, 16), (300, 64), (40, 64), (8, 128)])
def test_frechet_matches_independent_computation(n, d):
    m1, s1, m2, s2 = _gaussian_pair(np.random.default_rng(n + d), n, d)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_eigh(s1, s2)
    assert M.frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-3, abs=1e-3)


def test_frechet_matches_pytorch_fid_reference():
    from pytorch_fid.fid_score import calculate_frechet_distance

    m1, s1, m2, s2 = _gaussian_pair(np.random.default_rng(1), 200, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = calculate_frechet_distance(m1, s1, m2, s2)
    assert M.frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-6)


def test_frechet_singular_product_gets_eps_fix():
    "Exactly singular covariances (scipy flags the product): eps*I is added, biasing by O(sqrt(eps)) only."
    s1, s2 = np.diag([1.0, 0.0, 0.0]), np.diag([0.0, 4.0, 0.0])
    assert M.frechet_distance(np.zeros(3), s1, np.ones(3), s2) == pytest.approx(3 + 1 + 4, abs=1e-2)
    assert M.frechet_distance(np.zeros(3), s1, np.ones(3), s2, eps=1e-12) == pytest.approx(3 + 1 + 4, abs=1e-5)


def test_fid_self_zero_and_grows_with_noise():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(500, 32))
    assert abs(M.fid_from_features(f, f)) < 1e-6
    vals = [M.fid_from_features(f, f + rng.normal(scale=s, size=f.shape)) for s in (0.05, 0.3, 1.0, 2.0)]
    assert all(a < b for a, b in zip(vals, vals[1:])), vals


def test_running_stats_match_numpy():
    f = np.random.default_rng(2).normal(3.0, 2.0, size=(257, 12))
    st = M.RunningFeatureStats()
    for chunk in np.array_split(f, 9):
        st.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(st.mean, f.mean(0), atol=1e-12)
    np.testing.assert_allclose(st.cov, np.cov(f, rowvar=False), atol=1e-10)


def test_kid_matches_direct_double_sum():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(25, 6)), rng.normal(0.4, 1.2, size=(25, 6))
    k = lambda a, b: (a @ b / 6 + 1) ** 3
    sxx = sum(k(x[i], x[j]) for i in range(25) for j in range(25) if i != j) / (25 * 24)
    syy = sum(k(y[i], y[j]) for i in range(25) for j in range(25) if i != j) / (25 * 24)
    sxy = sum(k(x[i], y[j]) for i in range(25) for j in range(25)) / (25 * 25)
    mean, std = M.kid_from_features(x, y, num_subsets=1, subset_size=1000)
    assert mean == pytest.approx(sxx + syy - 2 * sxy, rel=1e-10) and std == 0


def test_kid_subsets_near_zero_for_same_distribution():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same, _ = M.kid_from_features(a, b, num_subsets=20, subset_size=100)
    shifted, _ = M.kid_from_features(a, b + 0.5, num_subsets=20, subset_size=100)
    assert abs(same) < 0.02 < shifted


def test_precision_recall_sanity():
    f = np.random.default_rng(5).normal(size=(300, 8))
    assert M.precision_recall(f, f) == {"precision": 1.0, "recall": 1.0}
    assert M.precision_recall(f, f + 50.0) == {"precision": 0.0, "recall": 0.0}
    part = M.precision_recall(f, f[f[:, 0] > 0.5])
    assert part["precision"] == 1.0 and part["recall"] < 0.8


@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda f: M.fid_from_features(np.zeros((0, 4)), f), "empty"),
        (lambda f: M.fid_from_features(f[:1], f), "at least 2"),
        (lambda f: M.fid_from_features(f, f[:, :3]), "differ in size"),
        (lambda f: M.kid_from_features(f[:1], f), "at least 2"),
        (lambda f: M.precision_recall(f[:2], f), "more than 3"),
        (lambda f: M.fid_from_features(np.full((5, 4), np.nan), f), "NaN"),
        (lambda f: M.modality_to_rgb(torch.rand(2, 1, 8, 8), 1), "1 channel"),
    ],
)
def test_clear_errors(call, msg):
    f = np.random.default_rng(6).normal(size=(20, 4))
    with pytest.raises(MedsynError, match=msg):
        call(f)


def test_segmentation_hand_computed():
    t = np.zeros((3, 32, 32), int)
    p = np.zeros_like(t)
    t[0, 5:15, 5:15] = 1
    p[0, 5:15, 7:17] = 1  # Dice 0.8
    t[0, 20, 5:16] = 2
    p[0, 24, 5:16] = 2  # HD95 = 4
    t[1, 5:15, 5:15] = 1
    p[1, 5:15, 5:15] = 1  # subject b: perfect slice ...
    t[2, 5:15, 5:15] = 1  # ... and a missed slice
    labels = {0: "bg", 1: "tumor", 2: "edema"}
    df = M.segmentation_metrics(p, t, ["a", "b", "b"], labels)
    a, b = df.set_index("subject").loc["a"], df.set_index("subject").loc["b"]
    assert a["dice_tumor"] == pytest.approx(0.8)
    assert a["dice_edema"] == pytest.approx(0.0) and a["hd95_edema"] == pytest.approx(4.0)
    assert a["dice_mean"] == pytest.approx(0.4)
    assert b["dice_tumor"] == pytest.approx(2 / 3) and b["n_slices"] == 2
    assert np.isnan(b["dice_edema"])  # absent from the ground truth
    per_slice = M.segmentation_metrics(p, t, ["a", "b", "b"], labels, aggregate="slice").set_index("subject")
    assert per_slice.loc["b", "dice_tumor"] == pytest.approx(0.5)
    with_bg = M.segmentation_metrics(p, t, ["a", "b", "b"], labels, include_background=True)
    assert "dice_bg" in with_bg.columns


def test_segmentation_spacing_scales_hd95():
    t = np.zeros((1, 32, 32), int)
    p = np.zeros_like(t)
    t[0, 10, 5:20] = 1
    p[0, 13, 5:20] = 1
    df = M.segmentation_metrics(p, t, ["s"], {0: "bg", 1: "x"}, spacing=(2.0, 0.5))
    assert df.loc[0, "hd95_x"] == pytest.approx(6.0)


def test_missing_weights_name_the_file():
    with pytest.raises(MedsynError) as e:
        M.InceptionFeatures()
    for part in (M.FID_INCEPTION_FILE, M.FID_INCEPTION_URL, INCEPTION_ENV, "weights_path"):
        assert part in str(e.value)
    with pytest.raises(MedsynError) as e:
        M.lpips_network()
    for part in (
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        M.LPIPS_ENV,
        "backbone_path",
    ):
        assert part in str(e.value)


def test_inception_loading_plumbing(tmp_path, monkeypatch):
    "Random-init state dict saved here: checks lookup + strict loading only; these features are not FID."
    state = M.fid_inception_architecture().state_dict()
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(state, hub / M.FID_INCEPTION_FILE)  # found in the torch hub cache
    ext = M.InceptionFeatures()
    assert ext.path == hub / M.FID_INCEPTION_FILE
    assert torch.equal(ext.net.blocks[3][1].branch1x1.conv.weight, state["Mixed_7b.branch1x1.conv.weight"])
    feats = ext(torch.rand(3, 3, 40, 40))
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    other = tmp_path / "elsewhere.pth"
    torch.save(state, other)
    monkeypatch.setenv(INCEPTION_ENV, str(other))  # env var wins over the hub cache
    assert M.InceptionFeatures().path == other


def test_lpips_embedding_equals_package_forward_and_backbone_loads(tmp_path, monkeypatch):
    import lpips
    import torchvision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_model = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False).eval()
    x0, x1 = torch.rand(4, 3, 48, 48), torch.rand(4, 3, 48, 48)
    with torch.no_grad():
        ref = ref_model(x0, x1, normalize=True).flatten()
    got = M.lpips_distances(M.lpips_embedding(ref_model, x0), M.lpips_embedding(ref_model, x1)).diagonal()
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    alex = torchvision.models.alexnet(weights=None)
    torch.save(alex.state_dict(), tmp_path / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv(M.LPIPS_ENV, str(tmp_path))
    model = M.lpips_network()
    assert torch.equal(getattr(model.net.slice3, "6").weight, alex.features[6].weight.detach())
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(MedsynError, match="bad.pth"):
        M.lpips_network(backbone_path=tmp_path / "bad.pth")


# ---------------------------------------------------------------- datasets and the CLI


def _toy_canonical(path, n_subjects, shift, seed, modalities=("T1", "T2")):
    from medsyn.data import write_canonical

    rs = np.random.default_rng(seed)

    def samples():
        for s in range(n_subjects):
            for z in range(3):
                m = np.zeros((32, 32), np.uint8)
                m[8 : 8 + rs.integers(4, 16), 10:20] = 1
                img = np.clip(rs.random((len(modalities), 32, 32)) * 0.5 + shift, 0, 1).astype(np.float32)
                yield {"image": img, "mask": m, "subject": f"p{s}", "slice": z}

    return write_canonical(
        path, samples(), name="toy", modalities=list(modalities), labels={0: "background", 1: "lesion"}
    )


def _random_unet_checkpoint(path, in_channels=2):
    "A randomly initialized U-Net saved like `medsyn segment` saves one: for plumbing tests, never a domain FID result."
    torch.manual_seed(0)
    try:
        from medsyn.segment import SegRun, build_unet, save_unet, seg_config
    except ImportError:  # no segment module: the {'state_dict', 'config': MONAI UNet kwargs} fallback format
        from monai.networks.nets import UNet

        cfg = dict(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=2,
            channels=[8, 16, 32],
            strides=[2, 2],
            num_res_units=1,
        )
        torch.save(
            {
                "state_dict": UNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}).state_dict(),
                "config": cfg,
            },
            path,
        )
        return path
    import pandas as pd

    cfg = seg_config("quick")
    run = SegRun(
        model=build_unet(in_channels, 2, cfg),
        history=pd.DataFrame(),
        best_epoch=0,
        best_val_dice=float("nan"),
        config=cfg,
        in_channels=in_channels,
        labels={0: "background", 1: "lesion"},
        seconds=0.0,
    )
    return save_unet(run, path)


def test_plain_monai_segmentation_checkpoint_format(tmp_path):
    "A {'state_dict', 'config'} MONAI UNet checkpoint written elsewhere is read by the one loader, medsyn.segment's."
    from monai.networks.nets import UNet

    cfg = dict(spatial_dims=2, in_channels=1, out_channels=3, channels=[4, 8], strides=[2], num_res_units=0, lr=0.1)
    net = UNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k != "lr"})
    torch.save({"state_dict": net.state_dict(), "config": cfg}, tmp_path / "u.pt")
    got = S.load_segmentation_model(tmp_path / "u.pt")
    assert got(torch.rand(1, 1, 16, 16)).shape == (1, 3, 16, 16)
    torch.save({"weights": 1}, tmp_path / "bad.pt")
    with pytest.raises(MedsynError, match="bad.pt"):
        S.load_segmentation_model(tmp_path / "bad.pt")


def test_metrics_does_not_import_segment():
    "The dependencies run one way (metrics <- segment <- evaluate): no import circle."
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(M))
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not {m for m in names if m.endswith(("segment", "evaluate", "study"))}, names


@pytest.fixture
def two_sets(tmp_path):
    return _toy_canonical(tmp_path / "real", 4, 0.0, 0), _toy_canonical(tmp_path / "fake", 3, 0.2, 1)


def test_dataset_hash_tracks_contents(two_sets):
    real, _ = two_sets
    h = dataset_hash(real)
    assert h == dataset_hash(real)
    f = sorted((real / "samples").glob("*.npz"))[0]
    z = dict(np.load(f))
    z["image"] = z["image"] // 2
    np.savez_compressed(f, **z)
    assert dataset_hash(real) != h


def test_evaluate_mismatched_channels(tmp_path, two_sets):
    one = _toy_canonical(tmp_path / "one", 2, 0.0, 2, modalities=("CT",))
    with pytest.raises(MedsynError, match="mismatched channels"):
        E.evaluate(two_sets[0], one, ["mask_stats"], progress=False)


def test_domain_pr_is_one_for_a_set_against_itself_and_needs_a_seg_model(tmp_path, two_sets):
    real, fake = two_sets
    ckpt = _random_unet_checkpoint(tmp_path / "unet.pt")
    same = E.evaluate(real, real, ["domain_pr"], seg_model=ckpt, progress=False, cache=False)["metrics"]["domain_pr"]
    assert same["precision"] == same["recall"] == 1.0 and same["features"].startswith("domain")
    missing = E.evaluate(real, fake, ["domain_pr"], progress=False)["metrics"]["domain_pr"]
    assert missing.startswith("error:") and "--seg-model" in missing


def test_evaluate_caches_the_features_of_both_sets(tmp_path, two_sets):
    real, fake = two_sets
    ckpt = _random_unet_checkpoint(tmp_path / "unet.pt")
    a = E.evaluate(real, fake, ["domain_fid"], seg_model=ckpt, progress=False)
    files = list((Path(M.cache_dir()) / "features").glob("*.npz"))
    assert len(files) == 2  # real and fake, each under its dataset hash
    b = E.evaluate(real, fake, ["domain_fid"], seg_model=ckpt, progress=False)
    assert a["metrics"]["domain_fid"]["value"] == pytest.approx(b["metrics"]["domain_fid"]["value"], rel=1e-6)


def test_cli_reports_missing_weights_as_errors(run_medsyn, tmp_path, two_sets):
    real, fake = two_sets
    ckpt = _random_unet_checkpoint(tmp_path / "unet.pt")
    env = {"MEDSYN_CACHE": str(tmp_path / "c"), "TORCH_HOME": str(tmp_path / "th")}
    res = run_medsyn(
        "evaluate",
        "--real",
        str(real),
        "--fake",
        str(fake),
        "--seg-model",
        str(ckpt),
        "--batch",
        "4",
        "--quiet",
        env=env,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)["metrics"]
    assert out["fid"].startswith("error:") and M.FID_INCEPTION_FILE in out["fid"]
    assert out["kid"].startswith("error:") and M.FID_INCEPTION_FILE in out["kid"]
    assert out["lpips"].startswith("error:") and "alexnet-owt-7be5be79.pth" in out["lpips"]
    # random-init U-Net: plumbing of domain FID / PR / Dice only
    assert np.isfinite(out["domain_fid"]["value"]) and out["domain_fid"]["value"] >= 0
    assert out["pr"]["features"].startswith("domain") and 0 <= out["pr"]["precision"] <= 1
    assert {k: out["domain_pr"][k] for k in ("precision", "recall")} == {
        k: out["pr"][k] for k in ("precision", "recall")
    }
    assert out["dice"]["real"]["n_subjects"] == 4 and len(out["dice"]["fake"]["per_subject"]) == 3
    assert "area_w1_lesion" in out["mask_stats"]


def test_cli_exits_nonzero_when_nothing_computed(run_medsyn, tmp_path, two_sets):
    real, fake = two_sets
    env = {"MEDSYN_CACHE": str(tmp_path / "c"), "TORCH_HOME": str(tmp_path / "th")}
    res = run_medsyn(
        "evaluate",
        "--real",
        str(real),
        "--fake",
        str(fake),
        "--metrics",
        "fid,domain_fid",
        "--quiet",
        "--out",
        str(tmp_path / "m.json"),
        env=env,
    )
    assert res.returncode == 1
    out = json.loads(res.stdout)["metrics"]
    assert M.FID_INCEPTION_FILE in out["fid"] and "--seg-model" in out["domain_fid"]
    assert json.loads((tmp_path / "m.json").read_text())["metrics"] == out
    bad = run_medsyn("evaluate", "--real", str(real), "--fake", str(fake), "--metrics", "fid,bogus", env=env)
    assert bad.returncode == 2 and "unknown metric" in bad.stderr


def test_dataset_hash_ignores_creation_time(two_sets):
    "The same data written again (a new `created` time in dataset.json) hash the same; any other field counts."
    real, _ = two_sets
    h, meta = dataset_hash(real), json.loads((real / "dataset.json").read_text())
    (real / "dataset.json").write_text(json.dumps({**meta, "created": "2000-01-01T00:00:00+00:00"}))
    assert dataset_hash(real) == h
    (real / "dataset.json").write_text(json.dumps({**meta, "name": "other"}))
    assert dataset_hash(real) != h
