"""selective_scan: the CPU kernel (float32/float64, forward and backward) against the sequential
float64 reference, the reference against a literal loop, the fast float32 math, and input checks."""
import importlib

import pytest
import torch

from py.ops import _native

ss = importlib.import_module("py.ops.selective_scan")  # the module (py.ops exports the function)
selective_scan, selective_scan_reference = ss.selective_scan, ss.selective_scan_reference


def make(batch, dim, L, N, groups, dtype=torch.float64, seed=0, D=True, z=False, bias=True, bc3=False):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    t = dict(u=rnd(batch, dim, L), delta=rnd(batch, dim, L) * 0.5,
             A=-(torch.rand(dim, N, generator=g, dtype=torch.float64) + 0.2),
             B=rnd(batch, N, L) if bc3 else rnd(batch, groups, N, L),
             C=rnd(batch, N, L) if bc3 else rnd(batch, groups, N, L),
             D=rnd(dim) if D else None, z=rnd(batch, dim, L) if z else None,
             delta_bias=rnd(dim) * 0.3 if bias else None)
    return {k: None if v is None else v.to(dtype) for k, v in t.items()}


def grads_of(fn, inputs, gy):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    full = {k: leaves.get(k) for k in inputs}
    y = fn(full)
    y = y[0] if isinstance(y, tuple) else y
    (y.double() * gy).sum().backward()
    return y.detach(), {k: v.grad for k, v in leaves.items()}


def rel_err(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


CASES = [  # batch, dim, L, N, groups, D, z, bias, softplus, B/C 3-D
    (2, 8, 37, 1, 2, True, False, True, True, False),      # N = 1, groups > 1, prime L
    (1, 5, 1, 1, 1, False, False, False, False, True),     # L = 1, odd dim (partial tile), no options
    (2, 6, 131, 3, 3, True, True, True, True, False),      # N not dividing 8, z gate
    (1, 4, 300, 16, 1, True, True, True, True, True),      # Vim-like N = 16, several time blocks
    (2, 16, 1031, 1, 4, True, False, True, True, False),   # VMamba-like, 3 time blocks (chunk 512)
    (1, 3, 97, 17, 1, False, True, False, False, False),   # N > 16, odd; only z
    (3, 12, 64, 2, 6, True, False, False, True, False),    # groups of 2 channels
    # N = 1 with whole 8-channel tiles per group: the transposed AVX2 path (float32)
    (2, 24, 1031, 1, 3, True, False, True, True, False),   # 3 time blocks, a 7-step tail
    (1, 16, 5, 1, 2, False, False, False, False, False),   # L < 8: the tail alone, no options
    (2, 16, 1040, 1, 2, True, False, True, True, False),   # L % 16 == 0: outputs in streamed 64-byte lines
    (2, 32, 45, 1, 1, True, False, True, False, True),     # softplus off (δ·A of both signs), 3-D B/C
    (3, 8, 50, 8, 1, True, True, True, True, False),       # vim_mnist-like N = 8: a 2-step tail
    (2, 6, 38, 4, 2, True, True, True, True, False),       # a 6-step tail, two channels per tile
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}d{}L{}N{}g{}".format(*c[:5]))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_kernel_matches_reference_forward_and_gradients(case, dtype):
    batch, dim, L, N, groups, D, z, bias, softplus, bc3 = case
    inp = make(batch, dim, L, N, groups, D=D, z=z, bias=bias, bc3=bc3, seed=L)
    gy = torch.randn(batch, dim, L, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def run(backend, x):
        return selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
                              delta_softplus=softplus, return_last_state=True, backend=backend)

    want_y, want_g = grads_of(lambda x: run("reference", x), inp, gy)
    _, want_last = run("reference", inp)
    cast = {k: None if v is None else v.to(dtype) for k, v in inp.items()}
    got_y, got_g = grads_of(lambda x: run("cpu", x), cast, gy)
    got_y2, got_last = run("cpu", cast)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert got_y.dtype == dtype and got_last.dtype == dtype
    assert got_last.shape == (batch, dim, N)
    assert torch.equal(got_y, got_y2)
    assert rel_err(got_y, want_y) < tol
    assert rel_err(got_last, want_last) < tol
    assert set(got_g) == set(want_g)
    for k in want_g:
        assert got_g[k].dtype == dtype, k
        assert got_g[k].shape == want_g[k].shape, k
        assert rel_err(got_g[k], want_g[k]) < tol * (5 if k == "A" else 1), k


def test_gradcheck_float64_through_the_kernel():
    inp = make(2, 4, 11, 2, 2, z=True)
    args = [inp[k].requires_grad_() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    fn = lambda *a: ss.selective_scan_op(*a, True, True)[0]
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8, rtol=1e-6)
    # and through the public function, with 3-D B/C, no options, softplus off
    inp = make(1, 3, 9, 1, 1, D=False, bias=False, bc3=True, seed=3)
    args = [inp[k].requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    fn = lambda u, d, A, B, C: selective_scan(u, d, A, B, C, backend="cpu")
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_across_time_blocks():
    """Checkpoints between time blocks carry h forward and g backward correctly."""
    chunk = _native.require("selective_scan_cpu").chunk_len(16)
    inp = make(1, 1, chunk + 5, 16, 1, z=True, seed=4)
    args = [inp[k].requires_grad_() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    fn = lambda *a: ss.selective_scan_op(*a, True, True)[0]
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


def test_n1_path_extreme_values_strided_rows_and_nan():
    """The N = 1 float32 path on values that take every branch of its math: raw δ above 20 and far
    below 0, A of both signs (softplus δ·A > 0 needs the overflow-safe exp), δ·A below −86.5 (flushed
    to 0); rows of u/δ/dout that are not L apart; and a NaN in δ, which must poison the rest of its row."""
    batch, dim, L, groups = 2, 16, 203, 2
    inp = make(batch, dim, L, 1, groups, seed=11)
    g = torch.Generator().manual_seed(12)
    inp["delta"] = torch.randn(batch, dim, L, generator=g, dtype=torch.float64) * 15
    inp["A"] = torch.linspace(-300.0, 0.02, dim, dtype=torch.float64)[:, None]  # last channel: A > 0
    gy = torch.randn(batch, dim, L, generator=g, dtype=torch.float64)
    run = lambda x: selective_scan(**x, delta_softplus=True, backend="reference" if x["u"].dtype == torch.float64
                                   else "cpu")
    want_y, want_g = grads_of(run, inp, gy)
    wide = lambda t: torch.cat([t, t[:, :, :3]], dim=2)[:, :, :L]  # row stride L + 3, time stride 1
    x = {k: None if v is None else v.float() for k, v in inp.items()}
    x["u"], x["delta"] = wide(x["u"]), wide(x["delta"])
    assert x["u"].stride(1) == L + 3
    leaves = {k: v.detach().clone().requires_grad_() if k not in ("u", "delta") else v.detach().requires_grad_()
              for k, v in x.items() if v is not None}
    y = run(leaves)
    grads = torch.autograd.grad(y, list(leaves.values()), grad_outputs=wide(gy.float()))
    assert rel_err(y, want_y) < 2e-5
    for (k, _), got in zip(leaves.items(), grads):
        assert rel_err(got, want_g[k]) < (1e-4 if k == "A" else 2e-5), k
    bad = dict(x, delta=x["delta"].clone())
    bad["delta"][1, 3, 50] = float("nan")
    y = run(bad)
    assert y[1, 3, 50:].isnan().all() and not y[1, 3, :50].isnan().any()
    assert not y[1, torch.arange(dim) != 3].isnan().any() and not y[0].isnan().any()


def test_n1_path_matches_the_general_path():
    """The AVX2 N = 1 path and the general float32 path (the same math, other order) agree closely."""
    mod = _native.require("selective_scan_cpu")
    inp = make(3, 40, 777, 1, 5, dtype=torch.float32, seed=13)
    gy = torch.randn(3, 40, 777, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    run = lambda x: selective_scan(**x, delta_softplus=True, return_last_state=True, backend="cpu")
    old = mod.set_n1_path(True)
    if not old:
        pytest.skip("the N = 1 AVX2 path is not compiled in or not supported by this CPU")
    try:
        fast = grads_of(run, inp, gy), run(inp)[1]
        mod.set_n1_path(False)
        general = grads_of(run, inp, gy), run(inp)[1]
    finally:
        mod.set_n1_path(old)
    (yf, gf), lastf = fast
    (yg, gg), lastg = general
    assert rel_err(yf, yg) < 1e-6 and rel_err(lastf, lastg) < 1e-6
    for k in gg:
        assert rel_err(gf[k], gg[k]) < 1e-5, k


def test_n1_path_delta_gradient_is_relatively_accurate_for_tiny_and_large_softplus():
    """The N = 1 backward gets softplus'(x) = σ(x) from the saved δ = softplus(x) as 1 − e^−δ; that
    must keep full relative accuracy where σ is tiny (x = −30: σ ≈ 1e-13) and round to 1 above 20."""
    L = 64
    inp = make(1, 8, L, 1, 1, seed=5)
    inp["delta"] = torch.linspace(-30.0, 25.0, L, dtype=torch.float64).expand(1, 8, L).contiguous()
    inp["delta_bias"] = None
    gy = torch.randn(1, 8, L, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    run = lambda x: selective_scan(**x, delta_softplus=True, backend="cpu")
    _, want = grads_of(lambda x: selective_scan(**x, delta_softplus=True, backend="reference"), inp, gy)
    _, got = grads_of(run, {k: None if v is None else v.float() for k, v in inp.items()}, gy)
    # elementwise relative (values down to ~1e-13); the general path's float32 rounding in the other
    # factor of ddelta already reaches ~3e-5 on one element here
    torch.testing.assert_close(got["delta"].double(), want["delta"], rtol=1e-4, atol=1e-30)


def test_n1_path_switched_off_between_forward_and_backward_is_an_error():
    """The N = 1 forward saves softplus(δ) instead of delta; a backward that cannot use it
    must say so rather than read garbage."""
    mod = _native.require("selective_scan_cpu")
    if not mod.n1_path(1, False, 8):
        pytest.skip("the N = 1 AVX2 path is not compiled in or not supported by this CPU")
    inp = make(1, 8, 20, 1, 1, dtype=torch.float32)
    u = inp["u"].requires_grad_()
    y = selective_scan(**dict(inp, u=u), delta_softplus=True, backend="cpu")
    old = mod.set_n1_path(False)
    try:
        with pytest.raises(ValueError, match="set_n1_path"):
            y.sum().backward()
    finally:
        mod.set_n1_path(old)


def test_reference_matches_a_literal_loop():
    inp = make(2, 4, 6, 3, 2, z=True)
    y = selective_scan_reference(**inp, delta_softplus=True)
    u, dl, A, B, C, D, z, bias = (inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))
    want = torch.empty_like(y)
    for b in range(2):
        for d in range(4):
            g = d // 2
            h = [0.0] * 3
            for t in range(6):
                x = float(dl[b, d, t] + bias[d])
                dt = x if x > 20 else float(torch.log1p(torch.exp(torch.tensor(x, dtype=torch.float64))))
                acc = 0.0
                for n in range(3):
                    h[n] = float(torch.exp(torch.tensor(dt * float(A[d, n]), dtype=torch.float64))) * h[n] \
                        + dt * float(B[b, g, n, t]) * float(u[b, d, t])
                    acc += float(C[b, g, n, t]) * h[n]
                zz = float(z[b, d, t])
                want[b, d, t] = (acc + float(D[d]) * float(u[b, d, t])) * zz / (1 + float(torch.exp(torch.tensor(-zz, dtype=torch.float64))))
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


def test_non_contiguous_and_expanded_inputs():
    inp = make(2, 6, 40, 2, 2, z=True)
    ref = selective_scan_reference(**inp, delta_softplus=True)
    nc = dict(inp)
    nc["u"] = inp["u"].transpose(1, 2).contiguous().transpose(1, 2)               # time stride != 1
    nc["delta"] = torch.cat([inp["delta"], inp["delta"]], dim=2)[:, :, ::2]       # strided time
    nc["delta"].copy_(inp["delta"])
    nc["A"] = inp["A"].t().contiguous().t()
    nc["B"] = inp["B"].permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    nc["C"] = torch.stack([inp["C"], inp["C"]], dim=2)[:, :, 0]                    # strided groups
    nc["D"] = torch.stack([inp["D"], inp["D"]], 1)[:, 0]
    nc["z"] = inp["z"][:, :, :]
    for k in ("u", "delta", "B", "C", "D"):
        assert not nc[k].is_contiguous(), k
    torch.testing.assert_close(selective_scan(**nc, delta_softplus=True, backend="cpu"), ref, rtol=1e-12, atol=1e-12)
    # B/C shared by the whole batch (stride 0 on the batch axis), with gradients
    Bx = inp["B"][:1].expand(2, -1, -1, -1).requires_grad_()
    y = selective_scan(inp["u"], inp["delta"], inp["A"], Bx, inp["C"], backend="cpu")
    yr = selective_scan_reference(inp["u"], inp["delta"], inp["A"], inp["B"][:1].expand(2, -1, -1, -1),
                                  inp["C"])
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    y.sum().backward()
    assert Bx.grad.shape == Bx.shape


def test_half_precision_inputs_run_in_float32():
    inp = make(2, 4, 50, 4, 2, z=True)
    want = selective_scan_reference(**{k: None if v is None else v.float() for k, v in inp.items()},
                                    delta_softplus=True)
    for dtype, tol in ((torch.bfloat16, 3e-2), (torch.float16, 3e-3)):
        x = {k: None if v is None else (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v.float())
             for k, v in inp.items()}
        leaves = {k: v.requires_grad_() for k, v in x.items() if v is not None}
        y = selective_scan(**x, delta_softplus=True, backend="cpu")
        assert y.dtype == dtype
        yr = selective_scan_reference(**x, delta_softplus=True)
        torch.testing.assert_close(y.float(), yr.float(), rtol=tol, atol=tol * want.abs().max().item())
        y.float().sum().backward()
        assert all(v.grad is not None and v.grad.dtype == v.dtype for v in leaves.values())


def test_mixed_parameter_dtypes():
    """A, D, delta_bias in float32 with float64 activations (mamba_ssm passes A.float() etc.)."""
    inp = make(1, 4, 20, 2, 1)
    x = dict(inp, A=inp["A"].float().requires_grad_(), D=inp["D"].float(), delta_bias=inp["delta_bias"].float())
    y = selective_scan(**x, delta_softplus=True, backend="cpu")
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, selective_scan_reference(**x, delta_softplus=True), rtol=1e-12, atol=1e-12)
    y.sum().backward()
    assert x["A"].grad.dtype == torch.float32


def test_deterministic_and_independent_of_thread_count():
    inp = make(2, 48, 300, 1, 2, dtype=torch.float32, seed=7)
    gy = torch.randn(2, 48, 300, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    run = lambda x: selective_scan(**x, delta_softplus=True, backend="cpu")
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3, 2):
            torch.set_num_threads(n)
            results.append(grads_of(run, inp, gy))
    finally:
        torch.set_num_threads(threads)
    y0, g0 = results[0]
    for y, g in results[1:]:
        assert torch.equal(y, y0)
        for k in g0:
            assert torch.equal(g[k], g0[k]), k


def test_identities():
    """Spec §9.8: δ -> 0 gives y = D·u; A -> −∞ gives y_t = δ_t·(C_t·B_t)·u_t + D·u_t."""
    inp = make(2, 4, 30, 3, 2)
    x = dict(inp, delta_bias=torch.full((4,), -60.0, dtype=torch.float64))  # softplus(−60) ≈ 1e-26
    for dtype in (torch.float64, torch.float32):
        xd = {k: v.to(dtype) for k, v in x.items() if v is not None}
        y = selective_scan(**xd, delta_softplus=True, backend="cpu")
        torch.testing.assert_close(y, xd["D"][:, None] * xd["u"], rtol=1e-6, atol=1e-6)
    x = dict(inp, A=torch.full((4, 3), -1e4, dtype=torch.float64), delta_bias=None)
    dt = torch.nn.functional.softplus(x["delta"])
    Bx, Cx = x["B"].repeat_interleave(2, 1), x["C"].repeat_interleave(2, 1)
    want = dt * (Bx * Cx).sum(2) * x["u"] + x["D"][:, None] * x["u"]
    for dtype in (torch.float64, torch.float32):
        xd = {k: None if v is None else v.to(dtype) for k, v in x.items()}
        y = selective_scan(**xd, delta_softplus=True, backend="cpu")
        torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)


def test_empty_sizes():
    for batch, dim, L in ((0, 4, 5), (2, 4, 0), (2, 0, 5)):
        inp = make(max(batch, 1), max(dim, 1), max(L, 1), 2, 1)
        x = dict(u=inp["u"][:batch, :dim, :L], delta=inp["delta"][:batch, :dim, :L], A=inp["A"][:dim],
                 B=inp["B"][:batch, :, :, :L], C=inp["C"][:batch, :, :, :L], D=inp["D"][:dim])
        leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
        y, last = selective_scan(**leaves, return_last_state=True, backend="cpu")
        assert y.shape == (batch, dim, L) and last.shape == (batch, dim, 2)
        assert not last.any()
        y.sum().backward()
        assert not leaves["A"].grad.any() and leaves["B"].grad.shape == x["B"].shape


EMPTY_CASES = [  # batch, dim, L, N, groups: each size 0 in turn, L within one time block and beyond it
    (0, 4, 5, 2, 2), (0, 4, 1100, 2, 2), (0, 8, 1100, 1, 1),
    (2, 0, 5, 2, 1), (2, 0, 1100, 3, 2), (2, 0, 1100, 1, 1),
    (2, 4, 0, 2, 2), (2, 8, 0, 1, 1),
]


@pytest.mark.parametrize("backend", ["reference", "cpu", "auto"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", EMPTY_CASES, ids=lambda c: "b{}d{}L{}N{}g{}".format(*c))
def test_empty_sizes_give_empty_results_and_zero_gradients(case, dtype, backend):
    """Regression: the CPU backward asked for time-block checkpoints when batch or dim was 0 and L
    exceeded the block (an empty checkpoint tensor has a null address); the reference returned no
    gradient (None) for delta, A, B, C, delta_bias when L = 0."""
    batch, dim, L, N, groups = case
    leaves = {k: v.requires_grad_() for k, v in make(batch, dim, L, N, groups, dtype=dtype, z=True).items()}
    y, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True, backend=backend)
    assert y.shape == (batch, dim, L) and y.dtype == dtype, (case, backend)
    assert last.shape == (batch, dim, N) and not last.any(), (case, backend)
    y.sum().backward()  # the empty sum's gradient reaches the op as a stride-0 tensor
    for k, v in leaves.items():
        assert v.grad is not None and v.grad.shape == v.shape, (case, backend, k)
        assert not v.grad.any(), (case, backend, k)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("big", [1e10, 1e30])
def test_huge_finite_delta_matches_reference(big, dtype):
    """A few huge steps (δ·A far below the exp underflow, δ·B·u huge) at a time-block start, inside a
    block and at the end: every backend follows the float64 recurrence, forward and gradients."""
    batch, dim, L, N = 1, 4, 600, 3
    inp = make(batch, dim, L, N, 1, z=True, seed=5)
    chunk = _native.require("selective_scan_cpu").chunk_len(N)
    for pos in (0, chunk, 7, L - 1):
        inp["delta"][0, pos % dim, pos] = big
    gy = torch.randn(batch, dim, L, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    run = lambda x: selective_scan_reference(**x, delta_softplus=True)
    want_y, want_g = grads_of(run, inp, gy)
    for backend in ("reference", "cpu"):
        cast = {k: v.to(dtype) for k, v in inp.items() if v is not None}
        got_y, got_g = grads_of(lambda x: selective_scan(**x, delta_softplus=True, backend=backend), cast, gy)
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        assert rel_err(got_y, want_y) < tol, backend
        for k in want_g:
            assert rel_err(got_g[k], want_g[k]) < tol * 5, (backend, k)


def test_no_graph_under_no_grad_and_last_state_has_no_grad():
    inp = make(1, 2, 10, 2, 1)
    u = inp["u"].requires_grad_()
    with torch.no_grad():
        y = selective_scan(u, inp["delta"], inp["A"], inp["B"], inp["C"], backend="cpu")
    assert y.grad_fn is None
    y, last = selective_scan(u, inp["delta"], inp["A"], inp["B"], inp["C"], return_last_state=True,
                             backend="cpu")
    assert y.grad_fn is not None and not last.requires_grad


def test_huge_page_hint_does_not_change_results():
    mod = _native.require("selective_scan_cpu")
    inp = make(8, 96, 3200, 1, 1, dtype=torch.float32)  # 9.8 MB outputs: above the hint's 8 MiB floor
    old = mod.set_huge_page_hint(False)
    try:
        a = selective_scan(**inp, delta_softplus=True, backend="cpu")
        mod.set_huge_page_hint(True)
        b = selective_scan(**inp, delta_softplus=True, backend="cpu")
    finally:
        mod.set_huge_page_hint(old)
    assert torch.equal(a, b)


def fast_math(fn, x):
    out = torch.empty_like(x)
    _native.require("selective_scan_cpu").fast_math_f32(fn, x.numel(), x.data_ptr(), out.data_ptr())
    return out


def test_fast_float32_math_accuracy():
    x = torch.linspace(-86.5, 88.5, 400_003, dtype=torch.float32)
    exact = torch.exp(x.double())
    assert rel_err(fast_math("exp", x) / exact, torch.ones_like(exact)) < 2.5e-7  # ~2 ulp
    xs = torch.cat([torch.linspace(-80, 30, 200_001), torch.tensor([-1e-8, 0.0, 1e-8, 19.999, 20.0, 20.001])])
    sp = torch.where(xs.double() <= 20, torch.log1p(torch.exp(xs.double())), xs.double())
    got = fast_math("softplus", xs).double()
    assert ((got - sp).abs() / sp).max() < 4e-7
    sg = torch.sigmoid(xs.double())
    assert ((fast_math("sigmoid", xs).double() - sg).abs() / sg).max() < 4e-7
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 89.0, 1000.0, -1000.0, -87.6])
    e = fast_math("exp", special)
    assert e[0].isnan() and e[1] == float("inf") and e[2] == 0 and e[3] == float("inf") and e[4] == float("inf")
    assert e[5] == 0 and e[6] == 0  # results below 2^-126 flush to zero
    s = fast_math("softplus", special)
    assert s[0].isnan() and s[1] == float("inf") and s[2] == 0 and s[4] == 1000.0
    g = fast_math("sigmoid", special)
    assert g[0].isnan() and g[1] == 1 and g[2] == 0 and g[4] == 1 and g[5] == 0


def test_backend_choice():
    inp = make(1, 2, 5, 1, 1, dtype=torch.float32)
    torch.testing.assert_close(selective_scan(**inp), selective_scan(**inp, backend="reference"),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan(**inp, backend="tpu")
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        selective_scan(**inp, backend="cuda")


def test_bad_inputs_name_the_argument():
    inp = make(2, 4, 5, 3, 2)

    def call(**over):
        x = dict(inp, **over)
        return selective_scan(**x, backend="cpu")

    with pytest.raises(ValueError, match="u must be 3-D"):
        call(u=inp["u"][0])
    with pytest.raises(TypeError, match="u must have dtype"):
        call(u=inp["u"].long())
    with pytest.raises(TypeError, match="u must be a torch.Tensor"):
        call(u=[1.0])
    with pytest.raises(ValueError, match="delta must have shape"):
        call(delta=inp["delta"][:, :, :4])
    with pytest.raises(TypeError, match="delta must have dtype"):
        call(delta=inp["delta"].float())
    with pytest.raises(ValueError, match="A must have shape"):
        call(A=inp["A"][:3])
    with pytest.raises(TypeError, match="A must be a real floating tensor"):
        call(A=inp["A"].to(torch.complex128))
    with pytest.raises(ValueError, match="A must be finite"):
        call(A=torch.full_like(inp["A"], float("nan")))
    with pytest.raises(ValueError, match="B must be 3-D .* or 4-D"):
        call(B=inp["B"][0, 0])
    with pytest.raises(ValueError, match="B must have shape"):
        call(B=inp["B"][:1])  # batch mismatch
    with pytest.raises(ValueError, match="dim % groups == 0"):
        call(B=torch.randn(2, 3, 3, 5, dtype=torch.float64), C=torch.randn(2, 3, 3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="C must have shape"):
        call(C=inp["C"][:, :, :2])
    with pytest.raises(ValueError, match="D must have shape"):
        call(D=inp["D"][:3])
    with pytest.raises(ValueError, match="D must be finite"):
        call(D=torch.full_like(inp["D"], float("inf")))
    with pytest.raises(ValueError, match="z must have shape"):
        call(z=inp["u"][:, :2])
    with pytest.raises(ValueError, match="delta_bias must be 1-D"):
        call(delta_bias=inp["delta_bias"][None])
    with pytest.raises(ValueError, match="delta_bias must be finite"):
        call(delta_bias=torch.full_like(inp["delta_bias"], float("nan")))
    with pytest.raises(ValueError, match="B must be on the same device as u"):
        call(B=inp["B"].to("meta"))
