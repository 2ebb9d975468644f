"""Tests for medsyn.networks: the three StyleGAN2 variants (joint / mask / cond) at tiny sizes."""

import copy

import pytest
import torch
import torch.nn.functional as F

from medsyn import ops
from medsyn.core import MedsynError
from medsyn.networks import (
    GAN_KINDS,
    GANConfig,
    Generator,
    SynthesisLayer,
    build_networks,
    count_params,
    fake_to_d_input,
    gan_config,
    hard_mask,
    mask_probs,
    mask_to_onehot,
    real_to_d_input,
    real_to_gan,
    split_output,
    to_d_input,
    to_pair,
)

R, C, K, N = 32, 2, 3, 4


def tiny(cfg, **kw):
    return GANConfig(
        kind=cfg,
        resolution=R,
        img_channels=C,
        num_labels=K,
        z_dim=32,
        w_dim=32,
        mapping_layers=2,
        channel_base=256,
        channel_max=32,
        **kw,
    )


@pytest.fixture(scope="module")
def onehot():
    torch.manual_seed(1)
    return mask_to_onehot(torch.randint(0, K, (N, R, R)), K)


def _cond(name, onehot):
    return onehot if name == "cond" else None


@pytest.mark.parametrize("name", GAN_KINDS)
def test_shapes_and_dtypes(name, onehot):
    torch.manual_seed(0)
    G, D = build_networks(tiny(name))
    cfg = G.cfg
    assert (G.z_dim, G.w_dim, G.img_resolution, G.cfg) == (32, 32, R, cfg)
    assert G.num_ws == 2 * 5 - 2
    z = torch.randn(N, G.z_dim)
    ws = G.mapping(z)
    assert ws.shape == (N, G.num_ws, G.w_dim)
    raw = G.synthesis(ws, cond=_cond(name, onehot))
    assert raw.shape == (N, cfg.out_channels, R, R) and raw.dtype == torch.float32
    assert raw.shape[1] == {"joint": C + K, "mask": K, "cond": C}[name]
    img, probs = split_output(raw, cfg)
    assert (img is None) == (name == "mask") and (probs is None) == (name == "cond")
    assert to_pair is split_output
    x = fake_to_d_input(raw, cfg, cond=_cond(name, onehot))
    assert x.shape == (N, cfg.d_in_channels, R, R)
    logits = D(x)
    assert logits.shape == (N, 1) and logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["joint", "mask"])
def test_masks_are_distributions(name):
    G, _ = build_networks(tiny(name))
    _, probs = split_output(G(torch.randn(N, G.z_dim)), G.cfg)
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(N, R, R))
    assert hard_mask(probs).dtype == torch.int64 and int(hard_mask(probs).max()) < K


@pytest.mark.parametrize("name", GAN_KINDS)
def test_gradients_reach_every_parameter(name, onehot):
    torch.manual_seed(0)
    G, D = build_networks(tiny(name))
    cond = _cond(name, onehot)
    F.softplus(-D(fake_to_d_input(G(torch.randn(N, G.z_dim), cond), G.cfg, cond=cond))).mean().backward()
    for pname, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"zero gradient for {pname}"


@pytest.mark.parametrize("name", GAN_KINDS)
def test_r1_double_backward(name, onehot):
    torch.manual_seed(0)
    _, D = build_networks(tiny(name))
    img = torch.rand(N, C, R, R) * 2 - 1
    real = real_to_d_input(img, onehot, D.cfg).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(D(real).sum(), real, create_graph=True)
    assert g.shape == real.shape and g.abs().sum() > 0
    g.square().sum([1, 2, 3]).mean().backward()
    assert all(p.grad is not None for n, p in D.named_parameters() if p.ndim > 1)


def test_truncation_psi_zero_gives_w_avg():
    G, _ = build_networks(tiny("joint"))
    G.mapping(torch.randn(64, G.z_dim), update_emas=True)
    w_avg = G.mapping.w_avg.clone()
    assert w_avg.abs().sum() > 0
    z = torch.randn(N, G.z_dim)
    torch.testing.assert_close(G.mapping(z, truncation_psi=0), w_avg.expand(N, G.num_ws, -1))
    ws = G.mapping(z, truncation_psi=0, truncation_cutoff=3)
    torch.testing.assert_close(ws[:, :3], w_avg.expand(N, 3, -1))
    torch.testing.assert_close(ws[:, 3:], G.mapping(z)[:, 3:])
    torch.testing.assert_close(G.mapping.w_avg, w_avg)  # update_emas=False leaves w_avg alone


def test_cond_output_follows_mask(onehot):
    torch.manual_seed(0)
    G, D = build_networks(tiny("cond"))
    z = torch.randn(N, G.z_dim)
    a = G(z, onehot, noise_mode="const")
    torch.testing.assert_close(a, G(z, onehot, noise_mode="const"))
    other = mask_to_onehot(torch.randint(0, K, (N, R, R)), K)
    assert (a - G(z, other, noise_mode="const")).abs().mean() > 1e-3
    # several images for one mask: different z, same mask
    assert (a - G(torch.randn(N, G.z_dim), onehot, noise_mode="const")).abs().mean() > 1e-3
    with pytest.raises(MedsynError, match="needs cond"):
        G(z)
    img = torch.randn(N, C, R, R)
    torch.testing.assert_close(D(img, cond=onehot), D(real_to_d_input(img, onehot, G.cfg)))


@pytest.mark.parametrize("name", GAN_KINDS)
def test_fused_equals_nonfused(name, onehot):
    torch.manual_seed(0)
    G, _ = build_networks(tiny(name))
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, SynthesisLayer):
                m.noise_strength.fill_(0.3)
    z, cond = torch.randn(N, G.z_dim), _cond(name, onehot)
    a = G(z, cond, noise_mode="const", fused_modconv=True)
    b = G(z, cond, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_ref_ops_match_default_ops(onehot):
    torch.manual_seed(0)
    G, D = build_networks(tiny("joint"))
    z = torch.randn(N, G.z_dim)
    old = ops.get_default_impl()
    try:
        ops.set_default_impl("ref")
        a = G(z, noise_mode="const")
        da = D(fake_to_d_input(a, G.cfg))
        ops.set_default_impl("auto")
        b = G(z, noise_mode="const")
        db = D(fake_to_d_input(b, G.cfg))
    finally:
        ops.set_default_impl(old)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(da, db, atol=1e-4, rtol=1e-4)


def test_noise_modes_and_state_dict_roundtrip():
    torch.manual_seed(0)
    cfg = tiny("joint")
    G, _ = build_networks(cfg)
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, SynthesisLayer):
                m.noise_strength.fill_(0.5)
    z = torch.randn(N, G.z_dim)
    assert (G(z) - G(z)).abs().max() > 1e-4  # random noise differs
    torch.testing.assert_close(G(z, noise_mode="none"), G(z, noise_mode="none"))
    G2 = Generator(GANConfig.from_dict(cfg.to_dict()))
    G2.load_state_dict(G.state_dict())
    torch.testing.assert_close(G2(z, noise_mode="const"), G(z, noise_mode="const"))
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    torch.testing.assert_close(G_ema(z, noise_mode="const"), G(z, noise_mode="const"))


def test_representation_helpers():
    cfg = tiny("joint")
    img01, mask = torch.rand(N, C, R, R), torch.randint(0, K, (N, R, R))
    img, oh = real_to_gan(img01, mask, cfg)
    assert img.min() >= -1 and img.max() <= 1 and oh.shape == (N, K, R, R)
    x = to_d_input(img, oh, cfg)
    assert set(x[:, C:].unique().tolist()) == {-1.0, 1.0}  # masks reach D in [-1, 1]
    torch.testing.assert_close(hard_mask(oh), mask)
    with pytest.raises(MedsynError):
        mask_to_onehot(mask + K, K)
    with pytest.raises(MedsynError):
        to_d_input(None, oh, cfg)
    p = mask_probs(torch.randn(N, K, R, R), tiny("mask", mask_repr="straight_through"))
    torch.testing.assert_close(p.sum(1), torch.ones(N, R, R))
    assert ((p - p.round()).abs() < 1e-6).all()


def test_bad_configs():
    with pytest.raises(MedsynError, match="unknown kind"):
        gan_config("cpu64", kind="pairs")
    with pytest.raises(MedsynError, match="power of two"):
        gan_config("cpu64", resolution=48)
    with pytest.raises(MedsynError, match="unknown GANConfig fields"):
        gan_config("cpu64", channelbase=1)
    with pytest.raises(MedsynError, match="unknown preset"):
        gan_config("gpu1024")


def test_param_counts_of_presets():
    counts = {}
    for preset in ("cpu64", "paper256"):
        G, D = build_networks(gan_config(preset, kind="joint", img_channels=4, num_labels=4))
        counts[preset] = (count_params(G), count_params(D))
    print(counts)
    assert counts["cpu64"][0] < counts["paper256"][0] and counts["cpu64"][1] < counts["paper256"][1]
    assert 2e7 < counts["paper256"][0] < 3.5e7 and 2e7 < counts["paper256"][1] < 3.5e7  # StyleGAN2 256px scale


def test_one_mask_many_images_and_pair01(onehot):
    from medsyn.networks import to_pair01

    torch.manual_seed(0)
    G, _ = build_networks(tiny("cond"))
    z = torch.randn(N, G.z_dim)
    out = G(z, onehot[:1], noise_mode="const")  # one mask broadcast over N latents
    assert out.shape == (N, C, R, R) and (out[0] - out[1]).abs().mean() > 1e-3
    img01, lab = to_pair01(out, G.cfg)
    assert lab is None and img01.min() >= 0 and img01.max() <= 1
    Gj, _ = build_networks(tiny("joint"))
    img01, lab = to_pair01(Gj(z), Gj.cfg)
    assert img01.shape == (N, C, R, R) and lab.shape == (N, R, R) and lab.dtype == torch.int64


def test_minibatch_std_odd_batch():
    _, D = build_networks(tiny("mask"))
    assert D(torch.randn(6, K, R, R)).shape == (6, 1)
    assert D(torch.randn(1, K, R, R)).shape == (1, 1)


# ---------------------------------------------------------------- mixed precision
def test_resolve_precision_auto_and_one_message(monkeypatch, capsys):
    import medsyn.networks as N

    monkeypatch.setattr(N, "_precision_said", set())
    monkeypatch.setattr(N, "cpu_bf16_flags", lambda cpuinfo=None: ["avx512_bf16"])
    assert N.resolve_precision("auto", "cpu") == "bf16"
    assert N.resolve_precision("auto", "cpu") == "bf16"
    err = capsys.readouterr().err
    assert err.count("precision auto -> bf16") == 1 and "avx512_bf16" in err
    monkeypatch.setattr(N, "_precision_said", set())
    monkeypatch.setattr(N, "cpu_bf16_flags", lambda cpuinfo=None: [])
    assert N.resolve_precision("auto", "cpu") == "fp32"
    assert "precision auto -> fp32" in capsys.readouterr().err
    assert N.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(MedsynError, match="needs a CUDA device"):
        N.resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("name", GAN_KINDS)
def test_bf16_blocks_follow_the_fp32_network(name, onehot):
    "Same weights: bf16 on the highest resolution stays within bf16 rounding; force_fp32 is the fp32 network."
    torch.manual_seed(0)
    G32, D32 = build_networks(tiny(name))
    G16, D16 = build_networks(tiny(name, precision="bf16", num_fp16_res=1))
    G16.load_state_dict(G32.state_dict())
    D16.load_state_dict(D32.state_dict())
    dtypes = {}
    for blk in G16.synthesis.blocks:
        blk.register_forward_hook(lambda m, i, o: dtypes.__setitem__(m.resolution, o[0].dtype))
    z, cond = torch.randn(N, G32.z_dim), _cond(name, onehot)
    a, b = G32(z, cond, noise_mode="const"), G16(z, cond, noise_mode="const")
    assert dtypes == {4: torch.float32, 8: torch.float32, 16: torch.float32, 32: torch.bfloat16}
    assert b.dtype == torch.float32 and 0 < (a - b).abs().max() < 0.05 * a.abs().max()
    torch.testing.assert_close(G16(z, cond, noise_mode="const", force_fp32=True), a, atol=1e-5, rtol=1e-5)
    x = fake_to_d_input(a.detach(), G32.cfg, cond=cond)
    la, lb = D32(x), D16(x)
    assert lb.dtype == torch.float32 and (la - lb).abs().max() < 0.05 * (1 + la.abs().max())
    torch.testing.assert_close(D16(x, force_fp32=True), la, atol=1e-5, rtol=1e-5)
