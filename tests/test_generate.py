"""Integration tests of medsyn.generate: canonical output, determinism, the mask -> cond chain and the CLI."""

import json

import pytest
import torch

from medsyn.augment import warp_masks
from medsyn.core import MedsynError
from medsyn.data import load_canonical, toy_dataset
from medsyn.generate import generate_pairs, latents, render_for_mask, sample_masks, synthesize
from medsyn.networks import generator_from_checkpoint, load_checkpoint, mask_to_onehot
from medsyn.train import train_gan

TINY = dict(channel_base=256, channel_max=32, z_dim=32, w_dim=32, mapping_layers=2)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    data = toy_dataset(root / "toy", n=12, res=32)
    ck = {
        cfg: train_gan(data, root / cfg, kind=cfg, kimg=0.008, batch=4, progress=False, metric_n=8, grid_n=2, **TINY)
        / "network-last.pt"
        for cfg in ("joint", "mask", "cond")
    }
    return data, ck


def test_joint_pairs_are_a_valid_canonical_dataset(ckpts, tmp_path):
    data, ck = ckpts
    ds = load_canonical(generate_pairs(ck["joint"], tmp_path / "syn", n=7, batch=3, seed=5))
    x, m = ds.tensors()
    assert len(ds) == 7 and x.shape == (7, 2, 32, 32) and m.shape == (7, 32, 32)
    assert ds.labels == load_canonical(data).labels and ds.modalities == ["m0", "m1"]
    assert set(m.unique().tolist()) <= set(ds.labels) and 0 <= x.min() and x.max() <= 1
    assert all(s.startswith("syn-") for s in ds.subjects)
    assert json.loads(ds.meta["provenance"])["seed"] == 5


def test_generation_is_deterministic_by_seed(ckpts, tmp_path):
    _, ck = ckpts
    a = load_canonical(generate_pairs(ck["joint"], tmp_path / "a", n=4, seed=1)).tensors()
    b = load_canonical(generate_pairs(ck["joint"], tmp_path / "b", n=4, seed=1, batch=1)).tensors()
    c = load_canonical(generate_pairs(ck["joint"], tmp_path / "c", n=4, seed=2)).tensors()
    assert torch.allclose(a[0], b[0], atol=1e-4) and torch.equal(a[1], b[1])
    assert (a[0] - c[0]).abs().mean() > 1e-3


def test_mask_then_cond_chain_and_real_masks(ckpts, tmp_path):
    data, ck = ckpts
    x, m = load_canonical(generate_pairs(ck["cond"], tmp_path / "chain", n=5, mask_ckpt=ck["mask"], png=True)).tensors()
    assert torch.equal(m, sample_masks(ck["mask"], n=5))
    assert (tmp_path / "chain" / "preview" / "grid.png").exists()
    _, real = load_canonical(data).tensors()
    _, m2 = load_canonical(generate_pairs(ck["cond"], tmp_path / "real", n=3, masks_from=data)).tensors()
    assert torch.equal(m2, real[:3])


def test_warped_real_masks_drive_the_cond_images(ckpts, tmp_path):
    """warp_seed deforms the real masks only (valid label maps, deterministic per seed); the images are rendered from
    them."""
    data, ck = ckpts
    real = load_canonical(data)
    _, real_masks = real.tensors()
    n = 15  # more than the 12 real masks: sample k <- mask k mod 12
    syn = load_canonical(generate_pairs(ck["cond"], tmp_path / "w", n=n, masks_from=data, warp_seed=4, batch=4, seed=2))
    x, m = syn.tensors()
    plain = real_masks[[k % len(real_masks) for k in range(n)]]
    assert m.dtype == plain.dtype and set(m.unique().tolist()) <= set(real.labels) and m.shape == plain.shape
    assert (m != plain).float().mean() > 0.01 and all(not torch.equal(a, b) for a, b in zip(m, plain))
    assert torch.equal(m, warp_masks(plain, 4, indices=range(n)))
    assert json.loads(syn.meta["provenance"])["mask_warp"]["seed"] == 4
    _, again = load_canonical(
        generate_pairs(ck["cond"], tmp_path / "w2", n=n, masks_from=data, warp_seed=4, batch=6, seed=2)
    ).tensors()
    _, other = load_canonical(
        generate_pairs(ck["cond"], tmp_path / "w3", n=n, masks_from=data, warp_seed=5, seed=2)
    ).tensors()
    assert torch.equal(again, m) and not torch.equal(other, m)
    G, gcfg = generator_from_checkpoint(load_checkpoint(ck["cond"]), device="cpu")
    z = latents(2, range(n), gcfg.z_dim)
    from_warped, _ = synthesize(G, gcfg, z, 0.7, cond=mask_to_onehot(m, gcfg.num_labels))
    from_plain, _ = synthesize(G, gcfg, z, 0.7, cond=mask_to_onehot(plain, gcfg.num_labels))
    assert torch.allclose(x, from_warped, atol=2e-3)  # the images are the generator's rendering of the warped masks
    assert (x - from_plain).abs().mean() > 1e-4  # ... not of the unwarped ones
    with pytest.raises(MedsynError, match="--masks-from"):
        generate_pairs(ck["cond"], tmp_path / "w4", n=2, mask_ckpt=ck["mask"], warp_seed=0)


def test_cond_renders_different_images_for_one_mask(ckpts):
    data, ck = ckpts
    _, real = load_canonical(data).tensors()
    imgs = render_for_mask(ck["cond"], real[0], n=3)
    assert imgs.shape == (3, 2, 32, 32)
    assert (imgs[0] - imgs[1]).abs().mean() > 1e-4 and (imgs[1] - imgs[2]).abs().mean() > 1e-4


def test_cli_generate(ckpts, tmp_path, run_medsyn):
    _, ck = ckpts
    res = run_medsyn(
        "generate", "--ckpt", str(ck["joint"]), "--n", "3", "--trunc", "0.7", "--out", str(tmp_path / "o"), "--nifti"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(load_canonical(tmp_path / "o")) == 3 and (tmp_path / "o" / "preview" / "mask.nii.gz").exists()
    res = run_medsyn("generate", "--ckpt", str(ck["cond"]), "--n", "3", "--out", str(tmp_path / "p"))
    assert res.returncode == 2 and "--mask-ckpt" in res.stderr
