"""The compiled ops (medsyn/csrc) against their plain-PyTorch reference: outputs, gradients and
second-order gradients over a grid of shapes and parameters, numerical gradient checks in float64,
the fallback rules, and the `medsyn ops` / `medsyn bench ops` commands.

The CPU kernels are compiled once per test session (cached on disk under medsyn's cache folder;
`medsyn.ops.load_plugin` also caches them per process). CUDA tests are marked `cuda` and skipped
without a GPU (tests/conftest.py)."""

import itertools
import json
import os
import shutil
import warnings

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from medsyn import ops
from medsyn.core import MedsynError

ACTS = list(ops.activation_funcs)
FILTERS = {
    "rank1-4x4": ops.setup_filter([1, 3, 3, 1]),
    "separable-8": ops.setup_filter([1, 2, 3, 4, 4, 3, 2, 1]),
    "full-3x2": torch.tensor([[1.0, 2.0], [-0.5, 3.0], [2.0, 0.25]]),
    "1x1": ops.setup_filter(None),
    "rank1-1x3": torch.tensor([[0.25, 0.5, 0.25]]),
}
PADDINGS = [0, [2, 1, 2, 1], [1, -1, 3, 0], [-2, 2, -1, 1], [3, 3, 0, 0]]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cpu_ops():
    st = ops.load_plugin("cpu")
    assert st.error is None, f"the CPU kernels must build on a machine with a C++ compiler: {st.error}"
    return st.ops


def _tol(scale, tol=1e-4):
    return tol * (1 + scale)


# ---------------------------------------------------------------- bias_act, float32, vs reference
@pytest.mark.parametrize("act", ACTS)
def test_bias_act_matches_reference(cpu_ops, act):
    gen = torch.Generator().manual_seed(0)
    shapes = [
        ((2, 5, 7, 3), 1, False),
        ((4, 6), 1, False),
        ((3, 4, 5), 2, False),
        ((2, 6, 5, 3), 1, True),
        ((1, 1, 1, 1), 1, False),
        ((3, 17, 9, 11), 1, False),
        ((2, 8, 4, 4), 1, True),
    ]
    for (shape, dim, cl), (gain, clamp), alpha in itertools.product(
        shapes, [(None, None), (0.7, 0.5), (2.0, None), (None, 1.0)], [None, 0.3]
    ):
        err, scale = (
            ops._compare_bias_act("cpu", shape, dim, cl, act, gain, clamp, gen, CPU)
            if alpha is None
            else _compare_with_alpha(act, shape, dim, cl, gain, clamp, alpha, gen)
        )
        assert err <= _tol(scale), (act, shape, dim, cl, gain, clamp, alpha, err)


def _compare_with_alpha(act, shape, dim, cl, gain, clamp, alpha, gen):
    x = torch.randn(shape, generator=gen)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    b = torch.randn(shape[dim], generator=gen)
    dy = torch.randn(shape, generator=gen)
    outs = []
    for impl in ("ref", "cpu"):
        xi, bi = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
        y = ops.bias_act(xi, bi, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp, impl=impl)
        outs.append([y.detach(), *torch.autograd.grad(y, [xi, bi], dy)])
    errs = [float((a - c).abs().max()) for a, c in zip(*outs)]
    return max(errs), max(float(a.abs().max()) for a in outs[0])


def test_bias_act_without_bias_and_layouts(cpu_ops):
    x = torch.randn(2, 3, 4, 5)
    for act in ["linear", "lrelu", "sigmoid"]:
        torch.testing.assert_close(ops.bias_act(x, act=act, impl="cpu"), ops.bias_act(x, act=act, impl="ref"))
    xc = x.contiguous(memory_format=torch.channels_last)
    y = ops.bias_act(xc, torch.randn(3), act="lrelu", impl="cpu")
    assert y.is_contiguous(memory_format=torch.channels_last), "channels-last in, channels-last out"
    # non-contiguous input (a transposed view) is handled
    xt = torch.randn(5, 3).t()
    b = torch.randn(5)
    torch.testing.assert_close(
        ops.bias_act(xt, b, dim=1, act="tanh", impl="cpu"), ops.bias_act(xt, b, dim=1, act="tanh", impl="ref")
    )


def test_bias_act_clamp_gradient_is_masked(cpu_ops):
    "Where the output is clamped, no gradient flows (also for linear and swish, which keep no output by default)."
    for act in ["linear", "swish", "lrelu"]:
        x = torch.tensor([[-5.0, -0.1, 0.2, 5.0]], requires_grad=True)
        y = ops.bias_act(x, act=act, gain=1.0, clamp=1.0, impl="cpu")
        y.sum().backward()
        assert x.grad[0, 3] == 0 and x.grad[0, 2] != 0, (act, x.grad)
        assert (x.grad[0, 0] == 0) == (act != "swish"), (act, x.grad)  # swish(-5) = -0.03 is not clamped


# ---------------------------------------------------------------- demod_bias_act (modulation epilogue), vs reference
@pytest.mark.parametrize("act", ["linear", "relu", "lrelu"])
def test_demod_bias_act_matches_reference(cpu_ops, act):
    "Outputs, first-order gradients (one-pass kernel and the create_graph path) and second-order gradients, float32."
    gen = torch.Generator().manual_seed(5)
    shapes = [
        ((2, 5, 7, 3), False),
        ((2, 6, 5, 3), True),
        ((3, 17, 9, 11), False),
        ((2, 16, 4, 4), True),
        ((1, 1, 1, 1), False),
    ]
    for (shape, cl), (gain, clamp), has in itertools.product(
        shapes, [(None, None), (0.7, 0.5), (1.4, 1.0)], itertools.product([True, False], repeat=3)
    ):
        err, scale = ops._compare_demod("cpu", shape, cl, act, gain, clamp, *has, gen, CPU)
        assert err <= _tol(scale), (shape, cl, act, gain, clamp, has, err)


def test_demod_bias_act_is_the_synthesis_epilogue(cpu_ops):
    "x * d + noise, then bias_act: the composition the synthesis layer ran before (addcmul + bias_act)."
    gen = torch.Generator().manual_seed(6)
    x, d = torch.randn(4, 8, 6, 6, generator=gen), torch.rand(4, 8, generator=gen) + 0.5
    nz, b = torch.randn(4, 1, 6, 6, generator=gen), torch.randn(8, generator=gen)
    old = ops.bias_act(torch.addcmul(nz, x, d[:, :, None, None]), b, act="lrelu", gain=2**0.5, clamp=0.8, impl="cpu")
    torch.testing.assert_close(ops.demod_bias_act(x, d, nz, b, act="lrelu", gain=2**0.5, clamp=0.8, impl="cpu"), old)
    # a noise of batch 1 is broadcast over the samples (the 'const' noise mode), its gradient summed
    n1 = nz[:1].clone().requires_grad_(True)
    y = ops.demod_bias_act(x, d, n1, b, impl="cpu")
    (g,) = torch.autograd.grad(y.sum(), n1)
    yr = ops.demod_bias_act_ref(x, d, n1, b)
    (gr,) = torch.autograd.grad(yr.sum(), n1)
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(g, gr)


def test_demod_bias_act_backward_is_deterministic_and_layout_preserving(cpu_ops):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(8, 16, 12, 12, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    d = (torch.rand(8, 16, generator=gen) + 0.5).requires_grad_(True)
    nz = torch.randn(8, 1, 12, 12, generator=gen, requires_grad=True)
    b = torch.randn(16, generator=gen, requires_grad=True)
    y = ops.demod_bias_act(x, d, nz, b, clamp=1.0, impl="cpu")
    assert y.is_contiguous(memory_format=torch.channels_last), "channels-last in, channels-last out"
    dy = torch.randn(y.shape, generator=gen)
    first = torch.autograd.grad(y, [x, d, nz, b], dy, retain_graph=True)
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            again = torch.autograd.grad(y, [x, d, nz, b], dy, retain_graph=True)
        finally:
            torch.set_num_threads(old)
        for a, c in zip(first, again):
            assert torch.equal(a, c)


@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_demod_bias_act_gradcheck(cpu_ops, impl):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    d = (torch.rand(2, 3, dtype=torch.float64, generator=gen) + 0.5).requires_grad_(True)
    nz = torch.randn(2, 1, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True)
    for act, gain, clamp, cl in [
        ("lrelu", None, None, False),
        ("lrelu", 1.3, 0.9, True),
        ("relu", 1.3, 0.9, False),
        ("linear", 0.7, 0.6, True),
    ]:
        xx = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True) if cl else x
        fn = lambda x, d, n, b, act=act, gain=gain, clamp=clamp: ops.demod_bias_act(
            x, d, n, b, act=act, gain=gain, clamp=clamp, impl=impl
        )
        assert gradcheck(fn, (xx, d, nz, b)) and gradgradcheck(fn, (xx, d, nz, b)), (act, gain, clamp, cl)
        fn2 = lambda x, n, act=act, gain=gain, clamp=clamp: ops.demod_bias_act(
            x, None, n, None, act=act, gain=gain, clamp=clamp, impl=impl
        )
        assert gradcheck(fn2, (xx, nz)) and gradgradcheck(fn2, (xx, nz)), (act, "no d, no b")


def test_demod_bias_act_bf16(cpu_ops):
    "bfloat16: float compute, one rounding; within bf16 rounding of the float32 result, and no fallback warning."
    gen = torch.Generator().manual_seed(9)
    x, d = torch.randn(2, 8, 9, 9, generator=gen), torch.rand(2, 8, generator=gen) + 0.5
    nz, b = torch.randn(2, 1, 9, 9, generator=gen), torch.randn(8, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = ops.demod_bias_act(*(t.to(torch.bfloat16) for t in (x, d, nz, b)), act="lrelu", clamp=256, impl="cpu")
    assert y.dtype == torch.bfloat16
    ref = ops.demod_bias_act_ref(*(t.to(torch.bfloat16).float() for t in (x, d, nz, b)), act="lrelu", clamp=256)
    assert (y.float() - ref).abs().max() <= 2**-7 * ref.abs().max()


def test_demod_bias_act_bad_arguments():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(MedsynError, match="zero second derivative"):
        ops.demod_bias_act(x, act="tanh")
    with pytest.raises(MedsynError, match="d must be"):
        ops.demod_bias_act(x, torch.ones(3, 2))
    with pytest.raises(MedsynError, match="noise must be"):
        ops.demod_bias_act(x, noise=torch.ones(2, 3, 4, 4))
    with pytest.raises(MedsynError, match="b must be"):
        ops.demod_bias_act(x, b=torch.ones(4))


# ---------------------------------------------------------------- upfirdn2d, float32, vs reference
@pytest.mark.parametrize("up,down", list(itertools.product([1, 2, 3, 4], [1, 2, 3, 4])))
def test_upfirdn2d_matches_reference(cpu_ops, up, down):
    gen = torch.Generator().manual_seed(up * 10 + down)
    n = 0
    for i, ((fname, f), pad, shape) in enumerate(
        itertools.product(FILTERS.items(), PADDINGS, [(2, 3, 7, 9), (1, 2, 1, 5), (1, 1, 16, 16)])
    ):
        (px0, px1, py0, py1), (fw, fh) = ops._parse_padding(pad), ops._get_filter_size(f)
        if shape[3] * up + px0 + px1 < fw or shape[2] * up + py0 + py1 < fh:
            continue
        if shape[2] == 16 and i % 3:
            continue  # the larger image on a third of the cases
        gain, flip = (1.0 if n % 2 else 3.0), bool((n // 2) % 2)
        err, scale = ops._compare_upfirdn2d("cpu", shape, f, up, down, pad, flip, gain, gen, CPU)
        assert err <= _tol(scale), (fname, pad, shape, flip, gain, err)
        n += 1
    assert n > 15


def test_upfirdn2d_anisotropic_scaling(cpu_ops):
    x = torch.randn(2, 3, 6, 7)
    f = FILTERS["full-3x2"]
    for kw in [dict(up=[2, 1], down=[1, 3], padding=[1, 0, 2, -1]), dict(up=[1, 3], down=[2, 1], padding=[0, 1])]:
        torch.testing.assert_close(
            ops.upfirdn2d(x, f, impl="cpu", **kw), ops.upfirdn2d(x, f, impl="ref", **kw), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("helper", ["upsample2d", "downsample2d", "filter2d"])
def test_helpers_match_reference_and_shapes(cpu_ops, helper):
    x = torch.randn(2, 4, 12, 10, requires_grad=True)
    f = ops.setup_filter([1, 3, 3, 1])
    fn = getattr(ops, helper)
    y_ref, y_cpu = fn(x, f, impl="ref"), fn(x, f, impl="cpu")
    expected = {"upsample2d": (24, 20), "downsample2d": (6, 5), "filter2d": (12, 10)}[helper]
    assert tuple(y_cpu.shape[2:]) == expected
    torch.testing.assert_close(y_cpu, y_ref, atol=1e-5, rtol=1e-5)
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    (g_cpu,) = torch.autograd.grad(y_cpu.square().sum(), x)
    torch.testing.assert_close(g_cpu, g_ref, atol=1e-4, rtol=1e-4)


def test_upfirdn2d_at_stylegan_size(cpu_ops):
    "One realistic shape: a 4x4 filter upsampling 64 channels of 32x32 (batch 4)."
    x = torch.randn(4, 64, 32, 32)
    f = ops.setup_filter([1, 3, 3, 1])
    torch.testing.assert_close(ops.upsample2d(x, f, impl="cpu"), ops.upsample2d(x, f, impl="ref"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        ops.downsample2d(x, f, impl="cpu"), ops.downsample2d(x, f, impl="ref"), atol=1e-5, rtol=1e-5
    )


# ---------------------------------------------------------------- float64 numerical gradient checks
@pytest.mark.parametrize("impl", ["ref", "cpu"])
@pytest.mark.parametrize("act", ACTS)
def test_bias_act_gradcheck(cpu_ops, impl, act):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True)
    for gain, clamp in [(None, None), (1.3, 0.9)]:
        fn = lambda x, b, gain=gain, clamp=clamp: ops.bias_act(x, b, act=act, gain=gain, clamp=clamp, impl=impl)
        assert gradcheck(fn, (x, b))
        assert gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_upfirdn2d_gradcheck(cpu_ops, impl):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, 4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    cases = [
        (FILTERS["rank1-4x4"], dict(up=2, padding=[2, 1, 2, 1])),
        (FILTERS["separable-8"], dict(down=2, padding=[3, 4, 3, 4])),
        (FILTERS["full-3x2"], dict(up=3, down=2, padding=[1, -1, 2, 0], flip_filter=True)),
        (FILTERS["rank1-4x4"], dict(up=[1, 2], down=[3, 1], padding=[-1, 2, 1, 1], gain=2.0)),
    ]
    for f, kw in cases if impl == "cpu" else cases[::2]:  # the reference is autograd itself: fewer cases
        fn = lambda x, f=f, kw=kw: ops.upfirdn2d(x, f, impl=impl, **kw)
        assert gradcheck(fn, (x,)) and gradgradcheck(fn, (x,)), kw


# ---------------------------------------------------------------- dispatch and fallback
def test_auto_resolves_to_the_compiled_kernel(cpu_ops):
    assert ops._resolve("auto", torch.zeros(1))[0] == "cpu"
    old = ops.get_default_impl()
    try:
        ops.set_default_impl("ref")
        assert ops._resolve("auto", torch.zeros(1))[0] == "ref"
        assert ops._resolve("cpu", torch.zeros(1))[0] == "cpu", "an explicit impl wins over the default"
    finally:
        ops.set_default_impl(old)
    with pytest.raises(MedsynError, match="unknown ops implementation"):
        ops.set_default_impl("fast")
    with pytest.raises(MedsynError, match="unknown ops implementation"):
        ops.bias_act(torch.zeros(2), impl="fast")


def test_failed_build_falls_back_to_reference_with_one_warning(cpu_ops, monkeypatch):
    monkeypatch.setitem(ops._plugins, "cpu", ops.PluginStatus("cpu", error="simulated compiler failure"))
    monkeypatch.setattr(ops, "_warned", set())
    x = torch.randn(2, 3, 4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = ops.bias_act(x, torch.randn(3), act="lrelu")
        ops.upfirdn2d(x, ops.setup_filter([1, 1]), up=2)
    msgs = [str(w.message) for w in caught if "medsyn.ops" in str(w.message)]
    assert len(msgs) == 1 and "simulated compiler failure" in msgs[0] and "reference" in msgs[0]
    assert y.shape == x.shape


def test_cuda_plugin_is_never_built_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    st = ops.load_plugin("cuda")
    assert st.ops is None and "no CUDA GPU" in st.error and st.seconds < 1.0


def test_cuda_kernels_compile_and_link_without_a_gpu():
    """Every CUDA kernel compiles and links with nvcc on a machine without a GPU, and the library registers all
    four ops; whether they compute the right numbers is checked on a GPU (the `cuda` tests, tools/gpu_check.sh)."""
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        pytest.skip("no CUDA toolkit (nvcc) on this machine")
    if torch.version.cuda is None:
        pytest.skip("this torch build has no CUDA support")
    r = ops.compile_cuda()
    assert r["ok"], r["error"]
    assert set(r["ops"]) == set(ops.KERNEL_OPS) == {"bias_act", "upfirdn2d", "demod_bias_act", "demod_bias_act_grad"}, (
        r["ops"]
    )


def test_bad_arguments_are_clear_errors():
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(MedsynError, match="smaller than the filter"):
        ops.upfirdn2d(x, torch.ones(6, 6), padding=-1, impl="ref")
    with pytest.raises(MedsynError, match="unknown activation"):
        ops.bias_act(x, act="gelu2")
    with pytest.raises(MedsynError, match="does not match dimension"):
        ops.bias_act(x, torch.zeros(3), act="relu")
    with pytest.raises(MedsynError, match="padding must be"):
        ops.upfirdn2d(x, None, padding=[1, 2, 3])


# ---------------------------------------------------------------- commands
def test_ops_check_command(cpu_ops, capsys):
    assert ops.ops_main(["--check", "--impl", "cpu", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "bias_act" in out and "upfirdn2d" in out and "demod_bias_act" in out and "MISMATCH" not in out


def test_bench_ops_quick_prints_json(cpu_ops, run_medsyn):
    res = run_medsyn("bench", "ops", "--quick", "--repeats", "1", "--min-time", "0", "--device", "cpu", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(res.stdout)
    impls = {(r["op"], r["impl"]) for r in data["ops"]}
    assert {
        ("bias_act", "ref"),
        ("bias_act", "cpu"),
        ("upfirdn2d", "ref"),
        ("upfirdn2d", "cpu"),
        ("demod_bias_act", "ref"),
        ("demod_bias_act", "cpu"),
    } <= impls
    assert all(r["ms"] > 0 and r["speedup_vs_ref"] > 0 for r in data["ops"])
    assert data["config"]["torch"] == torch.__version__


# ---------------------------------------------------------------- CUDA (skipped without a GPU)
@pytest.mark.cuda
def test_cuda_ops_match_reference():
    rows = ops.check_ops(("cuda",), quick=False)
    assert all(r["status"] == "ok" for r in rows), ops.format_check_table(rows)


@pytest.mark.cuda
def test_cuda_gradcheck():
    dev = torch.device("cuda")
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=dev, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=dev, requires_grad=True)
    for act in ACTS:
        fn = lambda x, b, act=act: ops.bias_act(x, b, act=act, gain=1.3, clamp=0.9, impl="cuda")
        assert gradcheck(fn, (x, b)) and gradgradcheck(fn, (x, b)), act
    f = ops.setup_filter([1, 3, 3, 1], device=dev)
    fn = lambda x: ops.upfirdn2d(x, f, up=2, down=3, padding=[2, -1, 1, 2], gain=2.0, impl="cuda")
    assert gradcheck(fn, (x,)) and gradgradcheck(fn, (x,))


@pytest.mark.cuda
def test_cuda_demod_bias_act_gradcheck_and_determinism():
    "The CUDA epilogue kernel: numerical gradients (float64, NCHW and channels-last) and bitwise-repeatable backward."
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=gen).to(dev).requires_grad_(True)
    d = (torch.rand(2, 3, dtype=torch.float64, generator=gen) + 0.5).to(dev).requires_grad_(True)
    nz = torch.randn(2, 1, 3, 4, dtype=torch.float64, generator=gen).to(dev).requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64, generator=gen).to(dev).requires_grad_(True)
    for act, gain, clamp, cl in [
        ("lrelu", None, None, False),
        ("lrelu", 1.3, 0.9, True),
        ("relu", 1.3, 0.9, False),
        ("linear", 0.7, 0.6, True),
    ]:
        xx = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True) if cl else x
        fn = lambda x, d, n, b, act=act, gain=gain, clamp=clamp: ops.demod_bias_act(
            x, d, n, b, act=act, gain=gain, clamp=clamp, impl="cuda"
        )
        assert gradcheck(fn, (xx, d, nz, b)) and gradgradcheck(fn, (xx, d, nz, b)), (act, gain, clamp, cl)
    xs = torch.randn(8, 64, 33, 33, device=dev, requires_grad=True)
    ds = (torch.rand(8, 64, device=dev) + 0.5).requires_grad_(True)
    ns = torch.randn(8, 1, 33, 33, device=dev, requires_grad=True)
    bs = torch.randn(64, device=dev, requires_grad=True)
    y = ops.demod_bias_act(xs, ds, ns, bs, act="lrelu", clamp=256, impl="cuda")
    dy = torch.randn_like(y)
    first = torch.autograd.grad(y, [xs, ds, ns, bs], dy, retain_graph=True)
    again = torch.autograd.grad(y, [xs, ds, ns, bs], dy)
    for a, c in zip(first, again):
        assert torch.equal(a, c)


@pytest.mark.cuda
def test_cuda_half_precision():
    dev = torch.device("cuda")
    x = torch.randn(4, 8, 16, 16, device=dev, dtype=torch.float16)
    b = torch.randn(8, device=dev, dtype=torch.float16)
    torch.testing.assert_close(
        ops.bias_act(x, b, act="lrelu", clamp=256, impl="cuda").float(),
        ops.bias_act(x.float(), b.float(), act="lrelu", clamp=256, impl="ref"),
        atol=1e-2,
        rtol=1e-2,
    )
    f = ops.setup_filter([1, 3, 3, 1], device=dev)
    torch.testing.assert_close(
        ops.upsample2d(x, f, impl="cuda").float(), ops.upsample2d(x.float(), f, impl="ref"), atol=1e-2, rtol=1e-2
    )


def test_fake_kernels_give_output_shapes(cpu_ops):
    "Shape-only kernels are registered so torch.compile can trace through the compiled ops."
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 3, 7, 9)
        y = cpu_ops.upfirdn2d(x, torch.empty(4, 4), 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0)
        z = cpu_ops.bias_act(x, torch.empty(3), torch.empty(0), torch.empty(0), torch.empty(0), 0, 1, 3, 0.2, 1.4, -1.0)
        e = cpu_ops.demod_bias_act(x, torch.empty(2, 3), torch.empty(2, 1, 7, 9), torch.empty(3), 3, 0.2, 1.4, -1.0)
        dx, dd, dn, db = cpu_ops.demod_bias_act_grad(
            x, x, torch.empty(2, 3), x, True, True, True, True, 3, 0.2, 1.4, -1.0
        )
    assert tuple(y.shape) == tuple(
        ops.upsample2d(torch.zeros(2, 3, 7, 9), ops.setup_filter([1, 3, 3, 1]), impl="ref").shape
    )
    assert tuple(z.shape) == (2, 3, 7, 9)
    assert tuple(e.shape) == tuple(dx.shape) == (2, 3, 7, 9)
    assert (tuple(dd.shape), tuple(dn.shape), tuple(db.shape)) == ((2, 3), (2, 1, 7, 9), (3,))


# ---------------------------------------------------------------- bfloat16 (mixed precision on CPU)
def test_bf16_kernels_match_bf16_reference(cpu_ops):
    "The CPU kernels in bf16 (float compute, one rounding) against the bf16 reference, at a bf16 tolerance."
    rows = ops.check_ops(("cpu",), quick=True, dtype=torch.bfloat16)
    assert [(r["op"], r["status"]) for r in rows] == [
        ("bias_act", "ok"),
        ("upfirdn2d", "ok"),
        ("demod_bias_act", "ok"),
    ], rows


def test_bf16_runs_the_kernels_not_the_fallback(cpu_ops):
    x = torch.randn(2, 4, 9, 9).to(torch.bfloat16)
    b = torch.randn(4).to(torch.bfloat16)
    f = ops.setup_filter([1, 3, 3, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to the reference warns
        y = ops.bias_act(x, b, act="lrelu", clamp=256, impl="cpu")
        u = ops.upsample2d(x, f, impl="cpu")
        d = ops.filter2d(x, f, impl="cpu")
    assert y.dtype == u.dtype == d.dtype == torch.bfloat16
    # float compute, one rounding: within one bf16 ulp of the float32 result
    ref = ops.filter2d(x.float(), f, impl="ref")
    assert (d.float() - ref).abs().max() <= 2**-7 * ref.abs().max()


@pytest.mark.parametrize("pad", [[0, 0, 0, 0], [2, 1, 2, 1], [-1, 3, 0, -2]])
def test_filter2d_fast_path_matches_reference(cpu_ops, pad):
    "up = down = 1 with a separable filter takes the flattened-plane path; odd sizes and negative padding included."
    gen = torch.Generator().manual_seed(3)
    for f in (ops.setup_filter([1, 3, 3, 1]), ops.setup_filter([1, 2, 3, 4, 4, 3, 2, 1])):
        x = torch.randn(3, 2, 13, 11, generator=gen, requires_grad=True)
        outs = []
        for impl in ("ref", "cpu"):
            y = ops.upfirdn2d(x, f, padding=pad, impl=impl)
            outs.append((y, *torch.autograd.grad(y, x, torch.ones_like(y))))
        for a, c in zip(*outs):
            torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


def test_keep_freed_memory(cpu_ops, monkeypatch):
    "keep_freed_memory tunes glibc's allocator once (GANTrainer calls it); MEDSYN_KEEP_FREED_MEMORY=0 leaves it alone."
    import sys as _sys

    if _sys.platform.startswith("linux"):
        assert ops.keep_freed_memory() in (True, False) and ops.keep_freed_memory() == ops.keep_freed_memory()
    monkeypatch.setattr(ops, "_malloc_tuned", None)
    monkeypatch.setenv("MEDSYN_KEEP_FREED_MEMORY", "0")
    assert ops.keep_freed_memory() is False
