"""The native ops as PyTorch custom ops (torch.ops.visionssm.*, py/ops/_library.py): torch.library.opcheck
on every op (schema, fake implementation, autograd registration, AOT dispatch), the residual-free
forward's backward, and the public functions running them inside torch.compile graphs."""
import importlib

import pytest
import torch
from torch.library import opcheck

import py.ops  # noqa: F401  registers the ops
from py.ops import cross_merge, cross_scan, dcnv4, selective_scan, ssd

ss = importlib.import_module("py.ops.selective_scan")
sd = importlib.import_module("py.ops.ssd")
dc = importlib.import_module("py.ops.dcnv4")
cs = importlib.import_module("py.ops.cross_scan")

OPS = ["cross_merge", "cross_scan", "dcnv4", "dcnv4_backward", "selective_scan", "selective_scan_backward", "ssd",
       "ssd_backward"]
DTYPES = [torch.float64, torch.float32]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _ss_args(dtype, batch, dim, L, N, groups, D=True, z=True, bias=True, seed=0, grad=False):
    g = _gen(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    args = [r(batch, dim, L), r(batch, dim, L) * 0.5, -torch.rand(dim, N, generator=g, dtype=dtype) - 0.5,
            r(batch, groups, N, L), r(batch, groups, N, L), r(dim) if D else None, r(batch, dim, L) if z else None,
            r(dim) * 0.1 if bias else None]
    return [t.requires_grad_(grad) if t is not None else None for t in args]


def _ssd_args(dtype, b, L, h, p, g, n, D=True, z=True, bias=True, init=False, seed=0, grad=False, D2=False):
    gen = _gen(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)
    args = dict(x=r(b, L, h, p), dt=r(b, L, h) * 0.5, A=-torch.rand(h, generator=gen, dtype=dtype) - 0.2,
                B=r(b, L, g, n), C=r(b, L, g, n), D=(r(h, p) if D2 else r(h)) if D else None,
                z=r(b, L, h, p) if z else None, dt_bias=r(h) * 0.1 if bias else None,
                initial_states=r(b, h, p, n) if init else None)
    return {k: v.requires_grad_(grad) if v is not None else None for k, v in args.items()}


def test_namespace_holds_every_op():
    assert sorted(op for op in dir(torch.ops.visionssm) if not op.startswith("_") and op in OPS) == OPS
    for name in OPS:
        assert isinstance(getattr(torch.ops.visionssm, name).default, torch._ops.OpOverload)


# ----------------------------------------------------------------------------------------------
# opcheck: every op, CPU, float32/float64, optional arguments present and absent
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    dict(batch=2, dim=8, L=37, N=4, groups=2),
    dict(batch=1, dim=16, L=300, N=16, groups=1, D=False, z=False, bias=False),  # several time blocks
    dict(batch=2, dim=16, L=20, N=1, groups=2, z=False),  # VMamba's N = 1 (float32: saves softplus(δ))
])
def test_opcheck_selective_scan(dtype, case):
    for softplus, save in ((True, False), (False, True)):
        for grad in (False, True):
            args = _ss_args(dtype, **case, grad=grad)
            opcheck(ss.selective_scan_op, (*args, softplus, save))
    u, delta, A, B, C, D, z, bias = _ss_args(dtype, **case)
    y, _, ckpt, saved = ss.selective_scan_op(u, delta, A, B, C, D, z, bias, True, True)
    opcheck(ss.selective_scan_backward_op, (torch.randn_like(y), u, delta, A, B, C, D, z, bias, True, ckpt, saved))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("opts", [dict(), dict(D=False, z=False, bias=False), dict(D2=True, z=False)])
def test_opcheck_ssd(dtype, causal, opts):
    for grad in (False, True):
        for save in (False, True):
            a = _ssd_args(dtype, 2, 19, 4, 3, 2, 5, init=causal, grad=grad, **opts)
            opcheck(sd.ssd_op, (a["x"], a["dt"], a["A"], a["B"], a["C"], 8, a["D"], a["z"], a["dt_bias"], True, causal,
                                a["initial_states"], save))
    a = _ssd_args(dtype, 2, 19, 4, 3, 2, 5, init=causal, **opts)
    rest = (a["B"], a["C"], 8, a["D"], a["z"], a["dt_bias"], True, causal, a["initial_states"])
    y, final, pregate = sd.ssd_op(a["x"], a["dt"], a["A"], *rest, True)
    opcheck(sd.ssd_backward_op, (torch.randn_like(y), torch.randn_like(final), a["x"], a["dt"], a["A"], *rest[:-3],
                                 True, causal, a["initial_states"], pregate, final))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("conv", [(3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0, False),   # (kh, kw, sh, sw, ph, pw, dh, dw,
                                  (3, 3, 2, 1, 0, 1, 1, 2, 1, 3, 0.5, True),    #  group, group_channels,
                                  (1, 1, 1, 1, 0, 0, 1, 1, 1, 5, 1.0, False)])  #  offset_scale, remove_center)
def test_opcheck_dcnv4(dtype, conv):
    kh, kw, sh, sw, ph, pw, dh, dw, group, gc, _, rc = conv
    K = kh * kw - rc
    H, W = 6, 7
    Ho, Wo = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1, (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    P = -(-3 * group * K // 8) * 8
    g = _gen(0)
    for grad in (False, True):
        value = torch.randn(2, H, W, group * gc, generator=g, dtype=dtype).requires_grad_(grad)
        om = torch.randn(2, Ho, Wo, P, generator=g, dtype=dtype).requires_grad_(grad)
        opcheck(dc.dcnv4_op, (value, om, *conv))
    y = dc.dcnv4_op(value.detach(), om.detach(), *conv)
    opcheck(dc.dcnv4_backward_op, (torch.randn_like(y), value.detach(), om.detach(), *conv))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 1, 4), (1, 1, 6, 6)])
def test_opcheck_cross_scan_merge(dtype, shape):
    B, C, H, W = shape
    for grad in (False, True):
        opcheck(cs.cross_scan_op, (torch.randn(shape, dtype=dtype, requires_grad=grad),))
        opcheck(cs.cross_merge_op, (torch.randn(B, 4, C, H, W, dtype=dtype, requires_grad=grad),))


def test_cpu_kernels_name_the_dtype_they_need():
    u, delta, A, B, C, D, z, bias = _ss_args(torch.float16, 1, 2, 3, 1, 1)
    with pytest.raises(TypeError, match="visionssm::selective_scan on the CPU takes float32/float64 u"):
        ss.selective_scan_op(u, delta, A, B, C, D, z, bias)
    with pytest.raises(TypeError, match="visionssm::cross_scan on the CPU takes float32/float64"):
        cs.cross_scan_op(torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16))


# ----------------------------------------------------------------------------------------------
# Backward without saved residuals recomputes them (what an op call with save_for_backward=False,
# e.g. from an exported program, gets)
# ----------------------------------------------------------------------------------------------
def test_backward_is_the_same_with_and_without_saved_residuals():
    def grads(save, N, z):
        args = _ss_args(torch.float32, 2, 16, 600, N, 2, z=z, seed=3, grad=True)
        y = ss.selective_scan_op(*args, True, save)[0]
        return torch.autograd.grad(y.square().sum(), [t for t in args if t is not None])

    for N, z in ((1, False), (4, True)):  # the N = 1 path (saved softplus(δ)) and checkpointed blocks
        for a, b in zip(grads(True, N, z), grads(False, N, z)):
            assert torch.equal(a, b)

    def ssd_grads(save):
        a = _ssd_args(torch.float64, 1, 21, 2, 3, 1, 4, init=True, grad=True, seed=4)
        y, final, _ = sd.ssd_op(a["x"], a["dt"], a["A"], a["B"], a["C"], 4, a["D"], a["z"], a["dt_bias"], True, True,
                                a["initial_states"], save)
        return torch.autograd.grad(y.sum() + final.square().sum(), [v for v in a.values() if v is not None])

    for a, b in zip(ssd_grads(True), ssd_grads(False)):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# The public functions inside torch.compile: no graph break, the op in the graph, eager results
# ----------------------------------------------------------------------------------------------
def _custom_ops_in(graphs):
    return {str(n.target) for g in graphs for m in g.modules() if isinstance(m, torch.fx.GraphModule)
            for n in m.graph.nodes if n.op == "call_function" and str(n.target).startswith("visionssm.")}


def _compiled_matches_eager(fn, inputs, want_ops, dynamic):
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*inputs)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert _custom_ops_in(explained.graphs) == want_ops
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    got, want = compiled(*inputs), fn(*inputs)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    g_got = torch.autograd.grad(got.square().sum(), leaves)
    g_want = torch.autograd.grad(want.square().sum(), leaves)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])  # dynamic: symbolic sizes/floats
def test_public_ops_compile_without_graph_breaks(dynamic):
    u, delta, A, B, C, D, z, bias = _ss_args(torch.float32, 2, 8, 40, 4, 2, grad=True)
    _compiled_matches_eager(lambda *a: selective_scan(*a, delta_softplus=True),  # 3-D B/C: one group
                            (u, delta, A, B[:, 0], C[:, 0], D, z, bias), {"visionssm.selective_scan.default"}, dynamic)
    a = _ssd_args(torch.float32, 2, 19, 4, 3, 2, 5, grad=True)
    _compiled_matches_eager(lambda x, dt, A, B, C: ssd(x, dt, A, B, C, 8, dt_softplus=True, causal=False),
                            (a["x"], a["dt"], a["A"], a["B"], a["C"]), {"visionssm.ssd.default"}, dynamic)
    value = torch.randn(1, 5, 6, 8, requires_grad=True)
    om = torch.randn(1, 5, 6, 56, requires_grad=True)
    _compiled_matches_eager(lambda v, o: dcnv4(v, o, 3, 3, 1, 1, 1, 1, 1, 1, 2, 4), (value, om),
                            {"visionssm.dcnv4.default"}, dynamic)
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    _compiled_matches_eager(lambda x: cross_merge(cross_scan(x).unflatten(-1, (4, 5))), (x,),
                            {"visionssm.cross_scan.default", "visionssm.cross_merge.default"}, dynamic)


# ----------------------------------------------------------------------------------------------
# The CUDA kernels registered into the same ops. No GPU here: their registration is checked, and
# their Python side (op_forward/op_backward of py/ops/selective_scan_cuda.py) runs on the CPU over
# the step-by-step model of the CUDA kernels standing in for the extension.
# ----------------------------------------------------------------------------------------------
def test_cuda_kernels_are_registered_into_the_ops():
    has = lambda op: torch._C._dispatch_has_kernel_for_dispatch_key(f"visionssm::{op}", "CUDA")
    assert {"cross_merge", "cross_scan", "selective_scan", "selective_scan_backward"} <= {op for op in OPS if has(op)}
    for op in ("dcnv4", "selective_scan", "ssd"):  # a forward op's CUDA kernel comes with its backward's
        assert has(op) == has(op + "_backward"), op


@pytest.mark.parametrize("self_check_passes", [True, False])
def test_selective_scan_cuda_op_functions_over_the_kernel_model(monkeypatch, self_check_passes):
    from py.ops import _cuda_dispatch, _native, selective_scan_cuda as ssc
    from py.ops.tests import selective_scan_cuda_model as kernel_model
    ext, original = kernel_model.FakeExtension(), _native.require
    monkeypatch.setattr(_native, "require", lambda n: ext if n == ssc.EXT else original(n))
    monkeypatch.setattr(_cuda_dispatch, "stream_of", lambda t: 0)
    monkeypatch.setattr(ssc, "_check", lambda *a: self_check_passes)  # the self-check itself: tested by gpu_check_test
    u, delta, A, B, C, D, z, bias = _ss_args(torch.float32, 2, 4, 40, 2, 2, seed=7)
    y, last, ckpt, saved = ssc.op_forward(u, delta, A, B, C, D, z, bias, True, True)
    want_y, want_last = ss.selective_scan_reference(u, delta, A, B, C, D, z, bias, True, True)
    torch.testing.assert_close(y, want_y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last, want_last, rtol=1e-4, atol=1e-5)
    assert ckpt.shape == (2, 4, 1, 2) and ckpt.dtype == torch.float32 and saved.numel() == 0  # the fake's shapes
    dy = torch.randn_like(y)
    grads = ssc.op_backward(dy, u, delta, A, B, C, D, z, bias, True, ckpt)
    leaves = [t.detach().double().requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
    want = torch.autograd.grad(ss.selective_scan_reference(*leaves, delta_softplus=True), leaves, dy.double())
    for name, g, w, t in zip("u delta A B C D z delta_bias".split(), grads, want, (u, delta, A, B, C, D, z, bias)):
        assert g.dtype == t.dtype and g.shape == t.shape, name
        torch.testing.assert_close(g.double(), w, rtol=1e-3, atol=1e-4, msg=name)
    assert bool(ext.calls) == self_check_passes  # the kernels ran, or the reference stood in
