"""Files from elsewhere never run code: checkpoints are read as data, an older medsyn checkpoint is upgraded only on
request (`medsyn checkpoint upgrade --trust`), an NVlabs pickle is named as such, and reports escape the names they
quote.

`fixtures/gan-run-medsyn-0.1/` is a real run folder written by medsyn 0.1 (commit c6dfd27, before checkpoints became
data): a tiny joint GAN (16 px, channel_base 64, channel_max 16) trained 8 images on `toy_dataset(n=8, res=16)`; its
checkpoint holds NumPy's RNG state as a NumPy array, so a weights-only load refuses it."""

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medsyn.core import MedsynError, UnsafeFileError, load_torch_file
from medsyn.data import toy_dataset
from medsyn.networks import generator_from_checkpoint, load_checkpoint, upgrade_checkpoint
from medsyn.segment import load_segmentation_model, load_unet
from medsyn.train import _set_rng_state, train_gan
from medsyn.weights import load_weights_file

OLD_RUN = Path(__file__).parent / "fixtures" / "gan-run-medsyn-0.1"
NVLABS_PICKLE = b"\x80\x02cdnnlib.util\nEasyDict\nq\x00)Rq\x01."  # the opening of an NVlabs network-snapshot .pkl


class CreatesFile:
    "Unpickling this object creates `path`: what a malicious checkpoint could do instead (run any command)."

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (io.open, (self.path, "w"))


@pytest.fixture
def evil(tmp_path):
    "A file shaped like every medsyn checkpoint (GAN and U-Net keys) whose pickle creates `marker` when opened."
    marker = tmp_path / "created-by-the-pickle"
    path = tmp_path / "from-a-supplement" / "network-best.pt"
    path.parent.mkdir()
    torch.save(
        dict(
            gan_config={"kind": "joint"},
            G_ema={},
            state_dict={},
            config={},
            in_channels=1,
            labels={"0": "background", "1": "x"},
            payload=CreatesFile(marker),
        ),
        path,
    )
    return path, marker


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("data") / "toy", n=8, res=16)


@pytest.mark.parametrize(
    "loader",
    [
        load_checkpoint,
        load_unet,
        load_segmentation_model,
        load_torch_file,
        lambda p: load_weights_file(p, "LPIPS AlexNet"),
    ],
    ids=["load_checkpoint", "load_unet", "load_segmentation_model", "load_torch_file", "load_weights_file"],
)
def test_every_loader_refuses_a_pickle_that_runs_code(evil, loader):
    path, marker = evil
    with pytest.raises(MedsynError) as e:
        loader(path)
    assert str(path) in str(e.value) and "checkpoint upgrade" in str(e.value)
    assert not marker.exists(), "opening the checkpoint ran its code"


def _refused(res, path, marker, *words):
    "The command exited 2 with one clear line naming the file, no traceback, and the pickle's code never ran."
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert str(path) in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert all(w in res.stderr for w in words), res.stderr[-2000:]
    assert not marker.exists(), "the command ran the checkpoint's code"


def test_commands_refuse_a_pickle_that_runs_code(evil, toy, tmp_path, run_medsyn):
    path, marker = evil
    _refused(
        run_medsyn("generate", "--ckpt", str(path), "--n", "2", "--out", str(tmp_path / "syn")),
        path,
        marker,
        "checkpoint upgrade",
    )
    run = tmp_path / "copied-run"  # a run folder copied from a colleague, resumed
    run.mkdir()
    shutil.copy(path, run / "network-last.pt")
    _refused(
        run_medsyn("train", "--data", str(toy), "--outdir", str(run), "--kimg", "0.016", "--resume", "--no-progress"),
        run / "network-last.pt",
        marker,
        "checkpoint upgrade",
    )
    _refused(
        run_medsyn("evaluate", "--real", str(toy), "--fake", str(toy), "--seg-model", str(path), "--metrics", "dice"),
        path,
        marker,
    )
    _refused(run_medsyn("checkpoint", "upgrade", str(path), "--out", str(tmp_path / "new.pt")), path, marker, "--trust")
    assert not (tmp_path / "syn").exists() and not (tmp_path / "new.pt").exists()


def test_an_nvlabs_pickle_is_named_and_not_opened(tmp_path, run_medsyn):
    pkl = tmp_path / "network-snapshot-005000.pkl"
    pkl.write_bytes(NVLABS_PICKLE)
    res = run_medsyn("generate", "--ckpt", str(pkl), "--n", "2", "--out", str(tmp_path / "syn"))
    assert (
        res.returncode == 2 and "NVlabs" in res.stderr and str(pkl) in res.stderr and "Traceback" not in res.stderr
    ), res.stderr
    with pytest.raises(UnsafeFileError, match="not a medsyn"):
        upgrade_checkpoint(pkl, tmp_path / "x.pt", trust=True)


def test_an_old_checkpoint_is_refused_then_upgraded_and_resumes(toy, tmp_path, run_medsyn):
    old = OLD_RUN / "network-last.pt"
    with pytest.raises(UnsafeFileError, match="checkpoint upgrade") as e:
        load_checkpoint(old)
    assert "numpy" in str(e.value)
    new = tmp_path / "run" / "network-last.pt"
    new.parent.mkdir()
    res = run_medsyn("checkpoint", "upgrade", str(old), "--out", str(new))
    assert res.returncode == 2 and "--trust" in res.stderr and not new.exists(), res.stderr
    res = run_medsyn("checkpoint", "upgrade", str(old), "--out", str(new), "--trust")
    assert res.returncode == 0, res.stderr
    # the new file is data, and holds what the old one held
    ref, ck = torch.load(old, map_location="cpu", weights_only=False), load_checkpoint(new)
    for k in ("G", "D", "G_ema"):
        assert ref[k].keys() == ck[k].keys() and all(torch.equal(ref[k][n], ck[k][n]) for n in ref[k])
    assert ck["cur_nimg"] == ref["cur_nimg"] == 8 and ck["augment"] == ref["augment"]
    _set_rng_state(ck["rng"])
    assert (
        np.array_equal(np.random.get_state()[1], ref["rng"]["numpy"][1])
        and np.random.get_state()[2:] == ref["rng"]["numpy"][2:]
    )
    G, gcfg = generator_from_checkpoint(ck)
    assert torch.isfinite(G(torch.randn(2, gcfg.z_dim), noise_mode="const")).all()
    # the upgraded run folder resumes where medsyn 0.1 stopped
    shutil.copy(OLD_RUN / "config.json", new.parent / "config.json")
    out = train_gan(
        toy,
        new.parent,
        kind="joint",
        kimg=0.016,
        batch=4,
        progress=False,
        metric_n=4,
        grid_n=2,
        ada_kimg=0.1,
        channel_base=64,
        channel_max=16,
        z_dim=16,
        w_dim=16,
        mapping_layers=1,
    )
    assert load_checkpoint(out / "network-last.pt")["cur_nimg"] == 16
    assert old.stat().st_size > 0 and torch.load(old, weights_only=False)["cur_nimg"] == 8  # the original is untouched


def test_every_checkpoint_medsyn_writes_is_data(toy, tmp_path):
    """A GAN run's checkpoints and a U-Net checkpoint load with weights_only=True (nothing but tensors, numbers,
    strings)."""
    run = train_gan(
        toy,
        tmp_path / "run",
        kind="cond",
        kimg=0.008,
        batch=4,
        progress=False,
        metric_n=4,
        grid_n=2,
        channel_base=64,
        channel_max=16,
        z_dim=16,
        w_dim=16,
        mapping_layers=1,
    )
    for name in ("network-last.pt", "network-best.pt"):
        ck = torch.load(run / name, map_location="cpu", weights_only=True)
        assert isinstance(ck["rng"]["numpy"][1], torch.Tensor)
