"""ADA for image+mask pairs (medsyn.augment): shared geometry, valid masks, identity at p=0,
gradient flow, determinism and the r_t controller."""

import json

import pytest
import torch

from medsyn.augment import AdaptiveAugment, AugmentPipe, augment_preset, rotate90, warp_bilinear, warp_masks
from medsyn.core import MedsynError

GEOMETRIC_OFF = dict(xflip=0, rotate90=0, xint=0, scale=0, rotate=0, aniso=0, xfrac=0)


def pairs(n=8, c=2, k=3, h=32, w=32, seed=0):
    "Images in [-1,1] whose last channel equals mask channel k-1 (mapped to [-1,1]), one-hot masks."
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, h // 4, w // 4, generator=g) * k).long()
    labels = labels.repeat_interleave(4, 1).repeat_interleave(4, 2)  # blocky label maps
    masks = torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float()
    imgs = torch.rand(n, c, h, w, generator=g) * 2 - 1
    imgs[:, -1] = masks[:, -1] * 2 - 1
    return imgs, masks


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("preset", ["ada", "bg", "simple", "none"])
def test_shapes_dtypes_and_valid_masks(preset):
    imgs, masks = pairs()
    pipe = augment_preset(preset, p=1.0)
    oi, om = pipe(imgs, masks, generator=gen(0))
    assert oi.shape == imgs.shape and om.shape == masks.shape
    assert oi.dtype == torch.float32 and om.dtype == torch.float32
    assert om.min() >= 0
    torch.testing.assert_close(om.sum(1), torch.ones_like(om[:, 0]), atol=1e-5, rtol=0)
    oi2, none = pipe(imgs, generator=gen(0))
    assert none is None and oi2.shape == imgs.shape


def test_p_zero_is_identity():
    imgs, masks = pairs()
    pipe = augment_preset("ada", noise=1, cutout=1, p=0.0)
    oi, om = pipe(imgs, masks)
    assert torch.equal(oi, imgs) and torch.equal(om, masks)


def test_geometric_transform_shared_by_image_and_mask():
    imgs, masks = pairs()
    oi, om = augment_preset("bg", p=1.0)(imgs, masks, generator=gen(1))
    assert not torch.allclose(oi, imgs)
    torch.testing.assert_close(oi[:, -1], om[:, -1] * 2 - 1, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_exact_transforms_keep_masks_one_hot(hw):
    imgs, masks = pairs(h=hw[0], w=hw[1])
    oi, om = augment_preset("simple", p=1.0)(imgs, masks, generator=gen(2))
    assert torch.equal(oi[:, -1], om[:, -1] * 2 - 1)
    assert set(om.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(om.sum(1), torch.ones_like(om[:, 0]))


def test_exact_warps_match_torch_permutations():
    x = torch.randn(4, 3, 6, 6)
    k = torch.tensor([0, 1, 2, 3])
    expected = torch.stack([torch.rot90(x[i], int(k[i]), (1, 2)) for i in range(4)])
    assert torch.equal(warp_bilinear(x, rotate90(k)), expected)


def test_color_and_corruptions_leave_masks_untouched():
    imgs, masks = pairs()
    pipe = augment_preset("ada", **GEOMETRIC_OFF, noise=1, cutout=1, p=1.0)
    oi, om = pipe(imgs, masks, generator=gen(3))
    assert torch.equal(om, masks) and not torch.allclose(oi, imgs)


def test_per_channel_color_option():
    x = torch.zeros(4, 3, 8, 8)
    shared, _ = augment_preset("ada", **GEOMETRIC_OFF, contrast=0, p=1.0)(x, generator=gen(0))
    per, _ = augment_preset("ada", **GEOMETRIC_OFF, contrast=0, p=1.0, color_per_channel=True)(x, generator=gen(0))
    assert torch.equal(shared[:, 0], shared[:, 1])
    assert not torch.allclose(per[:, 0], per[:, 1])


def test_gradients_reach_images_and_masks():
    imgs, masks = pairs()
    x, m = imgs.clone().requires_grad_(), masks.clone().requires_grad_()
    oi, om = augment_preset("ada", p=1.0)(x, m, generator=gen(4))
    (oi.square().sum() + (om * torch.arange(3.0).view(1, 3, 1, 1)).sum()).backward()
    assert x.grad.abs().sum() > 0 and m.grad.abs().sum() > 0
    assert torch.isfinite(x.grad).all()


def test_seeded_generator_is_deterministic():
    imgs, masks = pairs()
    pipe = augment_preset("ada", p=0.7)
    a = pipe(imgs, masks, generator=gen(5))
    b = pipe(imgs, masks, generator=gen(5))
    c = pipe(imgs, masks, generator=gen(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_p_is_a_buffer_in_state_dict():
    pipe = augment_preset("ada")
    pipe.p.fill_(0.25)
    other = augment_preset("ada")
    other.load_state_dict(pipe.state_dict())
    assert float(other.p) == 0.25


def test_bad_input_raises_medsyn_error():
    imgs, masks = pairs()
    with pytest.raises(MedsynError, match="must be"):
        augment_preset("ada")(imgs, masks[:, :, :16])
    with pytest.raises(MedsynError, match="unknown preset"):
        augment_preset("nope")
    with pytest.raises(MedsynError, match=">= 0"):
        AugmentPipe(xflip=-1)


def test_adaptive_p_moves_with_overfitting_and_resumes():
    ada = AdaptiveAugment(augment_preset("ada"), target=0.6, speed_kimg=500, interval=4)
    for _ in range(20):  # D overfits: 90 % positive logits
        ada.accumulate(torch.tensor([1.0] * 9 + [-1.0]))
        ada.update(batch_size=10)
    assert ada.p == pytest.approx(5 * 40 / 500_000, abs=1e-7)
    assert ada.r_t == pytest.approx(0.8)
    p_high = ada.p
    for _ in range(8):  # D undecided: half positive
        ada.accumulate(torch.tensor([1.0] * 5 + [-1.0] * 5))
        ada.update(batch_size=10)
    assert ada.p < p_high
    for _ in range(100):  # never below 0
        ada.accumulate(-torch.ones(10))
        ada.update(10)
    assert ada.p == 0.0
    ada.accumulate(torch.ones(10))  # mid-interval checkpoint
    state = json.loads(json.dumps(ada.state_dict()))
    twin = AdaptiveAugment(augment_preset("ada"))
    twin.load_state_dict(state)
    for a in (ada, twin):
        for _ in range(3):
            a.accumulate(torch.ones(10))
        a.update(10)
    assert ada.state_dict() == twin.state_dict() and ada.p > 0
    assert float(twin.pipe.p) == pytest.approx(twin.p)


def test_adaptive_p_clamped_to_one():
    ada = AdaptiveAugment(augment_preset("ada"), speed_kimg=0.001, interval=1)
    for _ in range(3):
        ada.accumulate(torch.ones(4))
        ada.update(4)
    assert ada.p == 1.0


@pytest.mark.cuda
def test_cuda_matches_cpu_with_cpu_generator():
    imgs, masks = pairs()
    pipe = augment_preset("ada", p=0.8)
    ci, cm = pipe(imgs, masks, generator=gen(7))
    gi, gm = pipe.cuda()(imgs.cuda(), masks.cuda(), generator=gen(7))
    torch.testing.assert_close(gi.cpu(), ci, atol=1e-4, rtol=0)
    torch.testing.assert_close(gm.cpu(), cm, atol=1e-4, rtol=0)


def test_warp_paths_agree_and_pipe_impls_match():
    from medsyn.augment import rotate2d, scale2d, translate2d

    G = (
        rotate2d(torch.tensor([0.4, 2.5]), n=2)
        @ scale2d(0.8, torch.tensor([1.0, 1.3]), n=2)
        @ translate2d(2.2, -5.1, n=2)
    )
    x = torch.randn(2, 4, 20, 28)
    torch.testing.assert_close(warp_bilinear(x, G, "gather"), warp_bilinear(x, G, "grid_sample"), atol=1e-4, rtol=0)
    imgs, masks = pairs()
    a = augment_preset("ada", p=1.0)(imgs, masks, generator=gen(8))
    b = augment_preset("ada", p=1.0, warp_impl="gather")(imgs, masks, generator=gen(8))
    torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=1e-4, rtol=0)


def test_warp_masks_keeps_label_maps_and_is_deterministic_per_sample():
    """Warped masks (the `warped+cond` variant's layouts) stay integer label maps of the same labels, change, and repeat
    per seed."""
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    r = ((yy - 24) ** 2 + (xx - 24) ** 2).float().sqrt()
    masks = torch.stack([torch.bucketize(r + s, torch.tensor([8.0, 14.0, 20.0])).to(torch.uint8) for s in range(4)])
    masks = 3 - masks.clamp(max=3)  # 0 outside ... 3 at the centre
    out = warp_masks(masks, seed=0)
    assert out.shape == masks.shape and out.dtype == masks.dtype
    assert set(out.unique().tolist()) <= set(masks.unique().tolist())
    changed = (out != masks).float().mean().item()
    assert 0.01 < changed < 0.5, changed
    assert torch.equal(out, warp_masks(masks, seed=0))
    assert torch.equal(out[2:3], warp_masks(masks[2:3], seed=0, indices=[2]))  # same warp alone or in a batch
    assert not torch.equal(out, warp_masks(masks, seed=1))
    with pytest.raises(MedsynError, match="integer label maps"):
        warp_masks(masks.float(), seed=0)
