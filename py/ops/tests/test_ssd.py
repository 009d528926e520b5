"""ssd: causal Mamba-2 SSD and the VSSD non-causal form, every backend vs float64 oracles."""
import pytest
import torch

import importlib

from py.ops import _native

# The module (py.ops.ssd is also the name of the function that py.ops exports).
S = importlib.import_module("py.ops.ssd")

F64 = torch.float64


def make(b, L, h, p, g, n, dtype=F64, seed=0, dt_scale=0.5, a_max=3.0, D_shape="hp", z=True,
         bias=True, init=True):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)
    t = dict(x=r(b, L, h, p), dt=r(b, L, h) * dt_scale, A=-torch.rand(h, generator=gen, dtype=F64) * a_max,
             B=r(b, L, g, n), C=r(b, L, g, n))
    t["D"] = None if D_shape is None else (r(h, p) if D_shape == "hp" else r(h))
    t["z"] = r(b, L, h, p) if z else None
    t["dt_bias"] = r(h) * 0.5 if bias else None
    t["initial_states"] = r(b, h, p, n) if init else None
    return {k: (None if v is None else v.to(dtype)) for k, v in t.items()}


def call(fn, t, chunk_size, causal=True, softplus=True, final=True, **kw):
    t = dict(t)
    if not causal:
        t["initial_states"] = None
    return fn(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size, D=t["D"], z=t["z"], dt_bias=t["dt_bias"],
              dt_softplus=softplus, causal=causal, initial_states=t["initial_states"],
              return_final_states=final, **kw)


def f64(t):
    return {k: (None if v is None else v.to(F64)) for k, v in t.items()}


def assert_rel(got, want, tol):
    """max |got - want| <= tol * max(|want|, 1)."""
    got, want = got.to(F64), want.to(F64)
    assert got.shape == want.shape
    err = (got - want).abs().max().item() if want.numel() else 0.0
    scale = max(want.abs().max().item() if want.numel() else 0.0, 1.0)
    assert err <= tol * scale, f"max err {err:.3e} > {tol:.1e} * {scale:.3e}"


def cpu(*a, **k):
    return S.ssd(*a, backend="cpu", **k)


def ref(*a, **k):
    return S.ssd(*a, backend="reference", **k)


TOL = {torch.float32: 2e-5, F64: 1e-11}
SHAPES = [  # (b, L, h, p, g, n)
    (2, 37, 4, 8, 2, 16),   # prime L, groups > 1
    (1, 1, 2, 4, 1, 1),     # L = 1, N = 1
    (2, 29, 6, 5, 3, 7),    # odd sizes everywhere
    (1, 131, 2, 16, 1, 32), # crosses the kernel's 64-token blocks, prime L
]


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [cpu, ref], ids=["cpu", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape", SHAPES)
def test_causal_matches_sequential_recurrence(fn, dtype, shape):
    t = make(*shape, dtype=dtype, seed=sum(shape))
    want_y, want_f = call(S.ssd_reference_sequential, f64(t), 1)
    y, fin = call(fn, t, 16)
    assert y.dtype == dtype and fin.shape == want_f.shape
    assert_rel(y, want_y, TOL[dtype])
    assert_rel(fin, want_f, TOL[dtype])


@pytest.mark.parametrize("fn", [cpu, ref], ids=["cpu", "reference"])
def test_chunk_size_does_not_change_the_result(fn):
    t = make(2, 41, 4, 6, 2, 5, seed=1)
    want_y, want_f = call(S.ssd_reference_sequential, t, 1)
    for chunk in (1, 7, 64, 100):
        y, fin = call(fn, t, chunk)
        assert_rel(y, want_y, 1e-12)
        assert_rel(fin, want_f, 1e-12)


@pytest.mark.parametrize("D_shape", [None, "h", "hp"])
@pytest.mark.parametrize("z", [False, True])
@pytest.mark.parametrize("bias_softplus", [(False, False), (True, True), (True, False)])
def test_optional_arguments(D_shape, z, bias_softplus):
    bias, softplus = bias_softplus
    t = make(2, 23, 4, 3, 1, 4, seed=3, D_shape=D_shape, z=z, bias=bias, init=False,
             dt_scale=0.2 if not softplus else 0.5)
    if not softplus:
        t["dt"] = t["dt"].abs()
    for causal in (True, False):
        want = call(S.ssd_reference_sequential, t, 1, causal=causal, softplus=softplus, final=False)
        for fn in (cpu, ref):
            got = call(fn, t, 8, causal=causal, softplus=softplus, final=False)
            assert_rel(got, want, 1e-12)


def noncausal_formula(t):
    """y_i = C_i . sum_j (-dt'_j A) B_j^T x_j + D x_i, gated; written independently of the module."""
    x, B, C = t["x"], t["B"], t["C"]
    h, g = x.shape[2], B.shape[2]
    dtp = torch.nn.functional.softplus(t["dt"] + t["dt_bias"])
    w = -dtp * t["A"]
    Bh = B.repeat_interleave(h // g, dim=2)
    Ch = C.repeat_interleave(h // g, dim=2)
    KV = torch.einsum("blhn,blhp->bhnp", Bh * w[..., None], x)
    y = torch.einsum("blhn,bhnp->blhp", Ch, KV) + x * t["D"]
    return y * torch.nn.functional.silu(t["z"]), KV.transpose(-1, -2)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape", SHAPES)
def test_noncausal_matches_formula(dtype, shape):
    t = make(*shape, dtype=dtype, seed=7 + sum(shape), init=False)
    want_y, want_kv = noncausal_formula(f64(t))
    for fn in (cpu, ref, S.ssd_reference_sequential):
        y, kv = call(fn, t, 16, causal=False)
        assert_rel(y, want_y, TOL[dtype] * 5)
        assert_rel(kv, want_kv, TOL[dtype] * 5)


def test_noncausal_is_permutation_equivariant():
    t = make(2, 19, 4, 5, 2, 6, seed=11, init=False)
    perm = torch.randperm(19, generator=torch.Generator().manual_seed(0))
    tp = dict(t)
    for k in ("x", "dt", "B", "C", "z"):
        tp[k] = t[k][:, perm]
    for fn in (cpu, ref):
        y = call(fn, t, 4, causal=False, final=False)
        yp = call(fn, tp, 4, causal=False, final=False)
        assert_rel(yp, y[:, perm], 1e-12)


@pytest.mark.parametrize("fn", [cpu, ref], ids=["cpu", "reference"])
def test_initial_states_continue_a_split_sequence(fn):
    t = make(2, 50, 4, 6, 2, 8, seed=5)
    y_full, f_full = call(fn, t, 16)
    first = {k: (v[:, :21] if k in ("x", "dt", "B", "C", "z") else v) for k, v in t.items()}
    second = {k: (v[:, 21:] if k in ("x", "dt", "B", "C", "z") else v) for k, v in t.items()}
    y1, f1 = call(fn, first, 16)
    second["initial_states"] = f1
    y2, f2 = call(fn, second, 16)
    assert_rel(torch.cat([y1, y2], dim=1), y_full, 1e-12)
    assert_rel(f2, f_full, 1e-12)


def test_strong_decay_limit():
    """A -> -inf: y_t = dt'_t (C_t . B_t) x_t + D x_t (every state is forgotten at once)."""
    for dtype in (torch.float32, F64):
        t = make(1, 40, 2, 4, 1, 3, dtype=dtype, seed=9, z=False, bias=False, init=False)
        t["A"] = torch.full((2,), -1e5, dtype=dtype)
        dtp = torch.nn.functional.softplus(t["dt"].to(F64))
        cb = (t["C"].to(F64) * t["B"].to(F64)).sum(-1)  # (b, L, 1)
        want = dtp[..., None] * cb[..., None] * t["x"].to(F64) + t["x"].to(F64) * t["D"].to(F64)
        for fn in (cpu, ref, S.ssd_reference_sequential):
            assert_rel(call(fn, t, 64, final=False), want, TOL[dtype] * 5)


def test_large_decays_cut_blocks_like_the_recurrence():
    """Per-token decays of e^-30..e^-300 force the kernel to cut blocks early (float32 and float64)."""
    for dtype in (torch.float32, F64):
        t = make(2, 45, 2, 4, 1, 5, dtype=dtype, seed=13, a_max=60.0, dt_scale=3.0)
        want_y, want_f = call(S.ssd_reference_sequential, f64(t), 1)
        y, fin = call(cpu, t, 64)
        assert_rel(y, want_y, TOL[dtype] * 5)
        assert_rel(fin, want_f, TOL[dtype] * 5)


def test_noncontiguous_inputs():
    t = make(2, 33, 4, 6, 2, 5, seed=17)
    nc = {}
    nc["x"] = t["x"].permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)          # strided L
    nc["dt"] = t["dt"].transpose(1, 2).contiguous().transpose(1, 2)
    nc["A"] = torch.stack([t["A"], t["A"]], 1)[:, 0]                               # stride 2
    nc["B"] = torch.stack([t["B"], t["B"]], -1)[..., 0]                            # stride-2 dstate
    nc["C"] = t["C"].transpose(0, 1).contiguous().transpose(0, 1)
    nc["D"] = t["D"].t().contiguous().t()
    nc["z"] = torch.stack([t["z"], t["z"]], -1)[..., 1]                            # stride-2 headdim
    nc["dt_bias"] = torch.stack([t["dt_bias"]] * 3, 1)[:, 2]
    nc["initial_states"] = t["initial_states"].transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not any(v.is_contiguous() for k, v in nc.items())
    for causal in (True, False):
        for fn in (cpu, ref):
            want = call(fn, t, 8, causal=causal)
            got = call(fn, nc, 8, causal=causal)
            assert_rel(got[0], want[0], 1e-13)
            assert_rel(got[1], want[1], 1e-13)


def test_silu_gate_accuracy_over_a_wide_range():
    """C = 0 leaves y = D x, so out = x * silu(z): checks the kernel's vectorised exp, incl. |z| > 88."""
    z = torch.linspace(-120, 120, 2 * 9 * 2 * 20, dtype=F64).reshape(2, 9, 2, 20)
    z[0, 0, 0, :6] = torch.tensor([0.0, -1e-8, 1e-8, -88.5, 88.5, 30.0])
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, 2, 20, generator=gen, dtype=F64)
    dt, A = torch.rand(2, 9, 2, generator=gen, dtype=F64), -torch.ones(2, dtype=F64)
    B, C = torch.randn(2, 9, 1, 3, generator=gen, dtype=F64), torch.zeros(2, 9, 1, 3, dtype=F64)
    D = torch.ones(2, dtype=F64)
    gy = torch.randn(2, 9, 2, 20, generator=gen, dtype=F64)
    want = x * torch.nn.functional.silu(z)
    zr = z.clone().requires_grad_()
    (x * torch.nn.functional.silu(zr) * gy).sum().backward()
    for dtype in (torch.float32, F64):
        for causal in (True, False):
            zk = z.to(dtype).clone().requires_grad_()
            y = S.ssd(x.to(dtype), dt.to(dtype), A, B.to(dtype), C.to(dtype), 4, D=D, z=zk, causal=causal,
                      backend="cpu")
            (y.to(F64) * gy).sum().backward()
            tol = 2e-6 if dtype == torch.float32 else 1e-14
            torch.testing.assert_close(y.to(F64), want, rtol=tol, atol=tol)
            torch.testing.assert_close(zk.grad.to(F64), zr.grad, rtol=tol, atol=tol)


def test_fp16_bf16_use_the_reference():
    t = make(1, 9, 2, 4, 1, 3, seed=2)
    want = call(S.ssd_reference_sequential, t, 1, final=False)
    for dtype in (torch.bfloat16, torch.float16):
        th = {k: v.to(dtype) for k, v in t.items()}
        y, fin = call(S.ssd, th, 4)
        assert y.dtype == dtype and fin.dtype == torch.float32
        assert_rel(y, want, 5e-2)
        with pytest.raises(TypeError, match="float32/float64"):
            call(cpu, th, 4)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------
GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def _fn_of(causal, chunk, backend="cpu"):
    def fn(x, dt, A, B, C, D, z, dt_bias, init):
        return S.ssd(x, dt, A, B, C, chunk, D=D, z=z, dt_bias=dt_bias, dt_softplus=True, causal=causal,
                     initial_states=init if causal else None, return_final_states=True, backend=backend)
    return fn


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("case", [(2, 7, 4, 3, 2, 4, 3, "hp"), (1, 6, 2, 2, 1, 1, 64, "h"),
                                  (1, 5, 2, 2, 1, 3, 2, None)])
def test_gradcheck_cpu_kernel(causal, case):
    b, L, h, p, g, n, chunk, D_shape = case
    t = make(b, L, h, p, g, n, seed=L + n, D_shape=D_shape)
    if not causal:
        t["initial_states"] = None
    inputs = tuple(None if t[k] is None else t[k].clone().requires_grad_() for k in GRAD_NAMES)
    assert torch.autograd.gradcheck(_fn_of(causal, chunk), inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_cpu_kernel_strong_decay():
    t = make(1, 9, 2, 2, 1, 3, seed=21, a_max=150.0, dt_scale=2.0, D_shape="h")
    inputs = tuple(t[k].clone().requires_grad_() for k in GRAD_NAMES)
    assert torch.autograd.gradcheck(_fn_of(True, 64), inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def _grads(fn, t, gy, gf):
    ins = [None if t[k] is None else t[k].clone().requires_grad_() for k in GRAD_NAMES]
    y, fin = fn(*ins)
    loss = (y.to(F64) * gy).sum() + (fin.to(F64) * gf).sum()
    return y, fin, torch.autograd.grad(loss, [v for v in ins if v is not None])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_grads_match_reference_autograd(causal, dtype):
    t = make(2, 150, 4, 16, 2, 16, dtype=dtype, seed=31, dt_scale=1.0)
    if not causal:
        t["initial_states"] = None
    gen = torch.Generator().manual_seed(0)
    gy = torch.randn(2, 150, 4, 16, generator=gen, dtype=F64)
    gf = torch.randn(2, 4, 16, 16, generator=gen, dtype=F64)
    _, _, want = _grads(_fn_of(causal, 1, backend="reference"), f64(t), gy, gf)
    want_seq = None
    if causal:  # the reference's chunked formulation and the recurrence agree too
        def seq(*a):
            x, dt, A, B, C, D, z, bias, init = a
            return S.ssd_reference_sequential(x, dt, A, B, C, 1, D=D, z=z, dt_bias=bias, dt_softplus=True,
                                              initial_states=init, return_final_states=True)
        _, _, want_seq = _grads(seq, f64(t), gy, gf)
    _, _, got = _grads(_fn_of(causal, 64), t, gy, gf)
    names = [k for k in GRAD_NAMES if t[k] is not None]
    for i, name in enumerate(names):
        tol = 1e-10 if dtype == F64 else 1e-4
        try:
            assert_rel(got[i], want[i], tol)
            if want_seq is not None:
                assert_rel(want_seq[i], want[i], 1e-10)
        except AssertionError as e:
            raise AssertionError(f"d{name}: {e}") from None


def test_backward_head_grouping_and_determinism():
    """dB/dC of heads sharing a group: in-task accumulation (1 thread) == per-head buffers summed."""
    t = make(1, 300, 4, 64, 1, 32, seed=41, dtype=torch.float32)  # big enough to run threaded
    gy = torch.randn(1, 300, 4, 64, generator=torch.Generator().manual_seed(1), dtype=F64)
    gf = torch.zeros(1, 4, 64, 32, dtype=F64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        g1 = _grads(_fn_of(True, 64), t, gy, gf)[2]
        torch.set_num_threads(2)  # b * g = 1 task would leave a thread idle: one task per head
        g2 = _grads(_fn_of(True, 64), t, gy, gf)[2]
        g3 = _grads(_fn_of(True, 64), t, gy, gf)[2]
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(g1, g2, g3):
        assert torch.equal(b, c)  # deterministic
        assert_rel(a, b, 1e-5)


def test_only_final_states_used_in_loss():
    t = make(1, 12, 2, 3, 1, 4, seed=4)
    ins = [t[k].clone().requires_grad_() for k in GRAD_NAMES]
    _, fin = _fn_of(True, 5)(*ins)
    fin.sum().backward()
    ref_ins = [t[k].clone().requires_grad_() for k in GRAD_NAMES]
    _, fin_r = _fn_of(True, 5, backend="reference")(*ref_ins)
    fin_r.sum().backward()
    for a, b in zip(ins, ref_ins):  # the reference leaves z.grad None: z does not reach the state
        assert_rel(a.grad, torch.zeros_like(a) if b.grad is None else b.grad, 1e-11)


def _seq_fn(causal):
    def fn(x, dt, A, B, C, D, z, dt_bias, init):
        return S.ssd_reference_sequential(x, dt, A, B, C, 1, D=D, z=z, dt_bias=dt_bias, dt_softplus=True,
                                          causal=causal, initial_states=init if causal else None,
                                          return_final_states=True)
    return fn


def _named_grads(fn, t, gy, gf):
    """y, final_states and {name: gradient of <y, gy> + <final, gf>} (None where an input is unused)."""
    names = [k for k in GRAD_NAMES if t[k] is not None]
    ins = {k: t[k].clone().requires_grad_() for k in names}
    y, fin = fn(*[ins.get(k) for k in GRAD_NAMES])
    loss = (y.to(F64) * gy).sum() + (fin.to(F64) * gf).sum()
    return y, fin, dict(zip(names, torch.autograd.grad(loss, list(ins.values()), allow_unused=True)))


def _check_against_recurrence(t, causal, chunk, backend, tol, what):
    """Output, final states and every gradient of ssd(backend) vs the float64 recurrence's."""
    t = t if causal else dict(t, initial_states=None)
    b, L, h, p = t["x"].shape
    n = t["B"].shape[-1]
    gen = torch.Generator().manual_seed(0)
    gy = torch.randn(b, L, h, p, generator=gen, dtype=F64)
    gf = torch.randn(b, h, p, n, generator=gen, dtype=F64)
    want_y, want_f, want = _named_grads(_seq_fn(causal), f64(t), gy, gf)
    y, fin, got = _named_grads(_fn_of(causal, chunk, backend=backend), t, gy, gf)
    assert y.shape == want_y.shape and fin.shape == want_f.shape, what
    pairs = [("y", want_y, y), ("final_states", want_f, fin)]
    zero = lambda k: torch.zeros_like(t[k], dtype=F64)  # an input the recurrence does not use
    pairs += [("d" + k, zero(k) if want[k] is None else want[k], got[k]) for k in got]
    for name, w, g in pairs:
        assert g is not None and g.shape == w.shape, f"{what}: {name} is {g if g is None else g.shape}"
        try:
            assert_rel(g, w, tol)
        except AssertionError as e:
            raise AssertionError(f"{what}: {name}: {e}") from None


EMPTY_SHAPES = [(0, 37, 4, 3, 2, 5), (2, 0, 4, 3, 2, 5), (2, 37, 0, 3, 1, 5), (2, 37, 4, 0, 2, 5)]


@pytest.mark.parametrize("backend", ["reference", "cpu", "auto"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=lambda s: "b{}L{}h{}p{}g{}n{}".format(*s))
def test_empty_sizes_every_backend(shape, dtype, causal, backend):
    """Each of batch, L, heads, headdim = 0: empty y, and final states / gradients like the recurrence's
    (regression: the CPU kernel rejected 0 heads and headdim 0 as "bad sizes")."""
    t = make(*shape, dtype=dtype, seed=1)
    what = f"{shape} {dtype} causal={causal} {backend}"
    _check_against_recurrence(t, causal, 16, backend, TOL[dtype], what)


@pytest.mark.parametrize("dtype, big", [(torch.float32, 1e10), (torch.float32, 1e30), (F64, 1e10),
                                        (F64, 1e30), (F64, 1e300)])
def test_huge_finite_dt_matches_the_recurrence(big, dtype):
    """Regression: a huge step at the start of a kernel block (dt'·A = -1e30) made the block-local
    log-decay sums absorb the steps after it (-1e30 + 0.5 == -1e30), so their decay was lost (CPU:
    relative error 1e-7 at dt 1e10, O(1) at 1e30); the chunked reference lost it the same way in
    exp(cumsum[-1] - cumsum). And the kernel's block scalings (up to e^32 in float32, e^300 in
    float64) overflowed on the huge X' = dt' x and state (NaN at 1e30 in float32, 1e300 in float64)."""
    t = make(2, 150, 2, 3, 1, 4, dtype=dtype, seed=8)
    for pos in (0, 5, 64, 70, 149):  # kernel block starts (0, 64), inside blocks, the last token
        t["dt"][pos % 2, pos, pos % 2] = big
    for causal in (True, False):
        for backend in ("cpu", "reference"):
            for chunk in (16, 64):
                _check_against_recurrence(t, causal, chunk, backend, TOL[dtype] * 5,
                                          f"dt={big:g} {dtype} causal={causal} {backend} chunk={chunk}")


# ---------------------------------------------------------------------------------------------
# Plumbing and bad input
# ---------------------------------------------------------------------------------------------
def test_extension_is_loaded():
    assert _native.require("ssd_cpu").max_block() >= 1


def test_auto_picks_cpu_and_returns_y_only():
    t = make(1, 10, 2, 3, 1, 2, seed=6)
    y = S.ssd(t["x"], t["dt"], t["A"], t["B"], t["C"], 4)
    assert isinstance(y, torch.Tensor) and y.shape == t["x"].shape
    assert_rel(y, S.ssd(t["x"], t["dt"], t["A"], t["B"], t["C"], 4, backend="reference"), 1e-12)


def test_flops_are_recorded_with_the_documented_formula():
    from py.ops import _common
    t = make(2, 10, 4, 3, 2, 5, seed=8)
    b, L, h, p, n = 2, 10, 4, 3, 5
    for causal, mult in ((True, 9), (False, 2)):
        for backend in ("cpu", "reference"):
            with _common.flop_recording() as rec:
                call(S.ssd, t, 4, causal=causal, backend=backend)
            assert rec.by_op == {"ssd": mult * b * L * h * p * n + 2 * b * L * h * p}  # D and z present


def test_bad_input_names_the_argument():
    t = make(2, 5, 4, 3, 2, 6, seed=0, z=False)
    x, dt, A, B, C = t["x"], t["dt"], t["A"], t["B"], t["C"]
    with pytest.raises(ValueError, match="x must be 4-D"):
        S.ssd(x[0], dt, A, B, C, 4)
    with pytest.raises(ValueError, match="dt must have shape"):
        S.ssd(x, dt[:, :4], A, B, C, 4)
    with pytest.raises(ValueError, match="dt must have shape"):
        S.ssd(x, dt[:1], A, B, C, 4)  # mismatched batch
    with pytest.raises(TypeError, match="B must have dtype"):
        S.ssd(x, dt, A, B.float(), C, 4)
    with pytest.raises(ValueError, match="heads % groups"):
        S.ssd(x, dt, A, torch.zeros(2, 5, 3, 6, dtype=F64), torch.zeros(2, 5, 3, 6, dtype=F64), 4)
    with pytest.raises(ValueError, match="C must have shape"):
        S.ssd(x, dt, A, B, C[..., :5], 4)
    with pytest.raises(ValueError, match="A must have shape"):
        S.ssd(x, dt, A[:3], B, C, 4)
    with pytest.raises(ValueError, match="D must have shape"):
        S.ssd(x, dt, A, B, C, 4, D=torch.zeros(4, 2, dtype=F64))
    with pytest.raises(ValueError, match="z must have shape"):
        S.ssd(x, dt, A, B, C, 4, z=x[:, :, :, :2])
    with pytest.raises(ValueError, match="dt_bias must have shape"):
        S.ssd(x, dt, A, B, C, 4, dt_bias=torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="initial_states must have shape"):
        S.ssd(x, dt, A, B, C, 4, initial_states=torch.zeros(2, 4, 3, 5, dtype=F64))
    with pytest.raises(ValueError, match="initial_states is only meaningful for causal=True"):
        S.ssd(x, dt, A, B, C, 4, causal=False, initial_states=torch.zeros(2, 4, 3, 6, dtype=F64))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        S.ssd(x, dt, A, B, C, 0)
    with pytest.raises(ValueError, match="A must be finite"):
        S.ssd(x, dt, torch.tensor([0.0, float("nan"), 0.0, 0.0], dtype=F64), B, C, 4)
    with pytest.raises(ValueError, match="dt must be finite"):
        S.ssd(x, dt.masked_fill(dt > 1, float("nan")), A, B, C, 4)
    with pytest.raises(ValueError, match="dt_bias must be finite"):
        S.ssd(x, dt, A, B, C, 4, dt_bias=torch.tensor([0.0, float("inf"), 0.0, 0.0], dtype=F64))
    with pytest.raises(TypeError, match="x must have dtype"):
        S.ssd(x.int(), dt, A, B, C, 4)
    with pytest.raises(ValueError, match="dt must be on the same device"):
        S.ssd(x, dt.to("meta"), A, B, C, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        S.ssd(x, dt, A, B, C, 4, backend="tpu")
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        S.ssd(x, dt, A, B, C, 4, backend="cuda")
