"""The SSD CUDA kernels' algorithm, checked on the CPU through their float64 model.

The kernels (cc/kernels/ssd/) have not run on a GPU. `ssd_cuda_model` replays them kernel by kernel
(chunk cumsum, chunk states, state passing, chunk scan with the fused C B^T, and the backward's
dstates / reverse state passing / dx / dB-dC / dt kernels with their partial buffers) on 64 x 64
tiles with zero-filled edges, plugged in as the extension under the real binding
(py/ops/ssd_cuda.py: the Params dict, workspaces, partial-sum reductions); each case compares the
forward, final_states and every gradient with autograd through the float64 reference. What this cannot check: float32/bf16/fp16/tf32 rounding,
the CUDA memory model, the CuTe fragment layouts (ssd_index_test.cc checks those on the host).
"""
import math
import warnings

import pytest
import torch

from py.ops import _cuda_dispatch, _native, ssd_cuda
from py.ops.tests import ssd_cuda_model as model

_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def _problem(seed, b, L, h, p, g, n, causal, D="h", z=True, bias=True, init=True):
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    return dict(x=mk(b, L, h, p), dt=mk(b, L, h) * 0.5, A=-torch.rand(h, generator=gen, dtype=torch.float64) - 0.2,
                B=mk(b, L, g, n) * 0.5, C=mk(b, L, g, n) * 0.5,
                D=None if D is None else (mk(h) if D == "h" else mk(h, p)), z=mk(b, L, h, p) if z else None,
                dt_bias=mk(h) * 0.3 if bias else None,
                initial_states=mk(b, h, p, n) if (init and causal) else None)


def _reference(q, chunk_size, softplus, causal, dt_limit):
    """Forward and autograd of the float64 reference (with the kernels' dt_limit)."""
    leaves = {k: None if v is None else v.clone().requires_grad_(True) for k, v in q.items()}
    y, final = ssd_cuda.reference(**leaves, chunk_size=chunk_size, softplus=softplus, causal=causal,
                                  dt_limit=dt_limit)
    gen = torch.Generator().manual_seed(7)
    dy, dfinal = torch.randn(y.shape, generator=gen, dtype=y.dtype), torch.randn(final.shape, generator=gen, dtype=y.dtype)
    present = [k for k in _NAMES if leaves[k] is not None]
    grads = torch.autograd.grad([y, final], [leaves[k] for k in present], [dy, dfinal])
    return y.detach(), final.detach(), dict(zip(present, grads)), dy, dfinal


CASES = [
    # (b, L, h, p, g, n, chunk, causal, D, z, bias, init, softplus, dt_limit)
    (1, 150, 4, 16, 2, 24, 64, True, "h", True, True, True, True, (0.0, math.inf)),   # ragged last chunk, groups
    (1, 150, 1, 70, 1, 70, 100, True, "hp", True, True, True, True, (0.0, math.inf)),  # p, n, Q past one tile
    (1, 90, 3, 8, 3, 8, 256, True, None, False, False, False, False, (0.0, math.inf)),  # one ragged chunk
    (2, 40, 2, 8, 1, 16, 16, True, "h", False, True, True, True, (0.45, 0.8)),        # dt_limit clamps
    (1, 300, 2, 20, 2, 16, 64, False, "h", True, True, False, True, (0.0, math.inf)), # non-causal, 2 blocks
    (1, 70, 2, 66, 1, 65, 32, False, "hp", False, True, False, False, (0.0, math.inf)),
]


def _case_problem(case):
    b, L, h, p, g, n, chunk, causal, D, z, bias, init, softplus, dt_limit = case
    q = _problem(len(case) + L, b, L, h, p, g, n, causal, D, z, bias, init)
    if not softplus:
        q["dt"] = q["dt"].abs()  # dt' > 0 keeps the decays below 1
    return q


@pytest.fixture
def fake(monkeypatch):
    """The model as cc.kernels.ssd_cuda under the real binding; the real module's parameter checks run
    first where it is built (Bazel builds it wherever nvcc is found)."""
    real = _native.load(ssd_cuda.EXT)
    ext = model.FakeExtension(check=real.check if real is not None else None)
    original = _native.require
    monkeypatch.setattr(_native, "require", lambda name: ext if name == ssd_cuda.EXT else original(name))
    monkeypatch.setattr(_cuda_dispatch, "stream_of", lambda t: 0)
    return ext


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_model_matches_reference(case, fake):
    """Through py/ops/ssd_cuda.py (its buffers, workspaces and fixed-order sums) with float32 inputs:
    forward, final_states and every gradient against the float64 reference on the same inputs."""
    _, _, _, _, _, _, chunk, causal, _, _, _, _, softplus, dt_limit = case
    q = {k: None if v is None else v.float() for k, v in _case_problem(case).items()}
    y, final, grads, dy, dfinal = _reference({k: None if v is None else v.double() for k, v in q.items()},
                                             chunk, softplus, causal, dt_limit)
    kw = dict(chunk_size=chunk, softplus=softplus, causal=causal, dt_limit=dt_limit)
    ky, kfinal, pregate = ssd_cuda.kernel_forward(**q, **kw, save=True)
    kgrads = ssd_cuda.kernel_backward(dy.float(), dfinal.float(), **q, **kw, pregate=pregate)
    close = lambda got, want, what: torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4,
                                                                msg=lambda m: f"{what}: {m}")
    assert ky.dtype == torch.float32 and kfinal.dtype == torch.float32
    close(ky, y, "y")
    close(kfinal, final, "final_states")
    for name, got in zip(_NAMES, kgrads):
        if q[name] is None:
            assert got is None, name
            continue
        assert got.dtype == q[name].dtype and got.shape == q[name].shape, name
        close(got, grads[name], "d" + name)


def test_dt_limit_really_clamps():
    """The clamped case is not vacuous: dt' falls below and above its limits."""
    case = next(c for c in CASES if c[-1] != (0.0, math.inf))
    q = _case_problem(case)
    pb = model.Problem(q["x"], q["B"], case[6], True)
    dtp, _ = model.chunk_cumsum(pb, q["dt"], q["A"], q["dt_bias"], True, 0.0, math.inf)
    lo, hi = case[-1]
    assert (dtp[dtp > 0] < lo).any() and (dtp > hi).any()


def test_model_layout_is_the_extensions():
    """The model's geometry and workspace sizes (`layout_of`) are ssd_layout.h's, as the built module
    reports them."""
    mod = _native.load(ssd_cuda.EXT)
    if mod is None:
        pytest.skip(_native.unavailable_reason(ssd_cuda.EXT))
    for causal, chunk, L, p, n in ((True, 64, 150, 70, 65), (True, 100, 200, 16, 24), (False, 64, 300, 130, 64),
                                   (True, 1, 7, 5, 3)):
        params = dict(dtype="float32", causal=causal, batch=2, seqlen=L, heads=4, headdim=p, groups=2, dstate=n,
                      chunk_size=chunk)
        assert mod.layout(params) == model.FakeExtension().layout(params)


def test_op_kernels_pass_the_self_check_and_match_the_reference(fake):
    """op_forward/op_backward (what torch.ops.visionssm.ssd(_backward) run on CUDA tensors), here on
    CPU tensors with the model as the extension: the first-call self-check passes, then the results
    are the kernels' (the op's shapes and dtypes: final_states and every gradient in its input's dtype)."""
    _cuda_dispatch.reset_self_checks()
    case = CASES[0]
    _, _, _, _, _, _, chunk, causal, _, _, _, _, softplus, _ = case
    q = {k: None if v is None else v.float() for k, v in _case_problem(case).items()}
    args = [q[k] for k in ("x", "dt", "A", "B", "C")] + [chunk, q["D"], q["z"], q["dt_bias"], softplus, causal,
                                                         q["initial_states"]]
    y, final, pregate = ssd_cuda.op_forward(*args, True)
    assert _cuda_dispatch._VERIFIED == {("ssd[causal, z]", "torch.float32", "cpu"): True}
    assert final.dtype == torch.float32 and pregate.shape == q["x"].shape
    want_y, want_final, grads, dy, dfinal = _reference({k: None if v is None else v.double() for k, v in q.items()},
                                                       chunk, softplus, causal, (0.0, math.inf))
    torch.testing.assert_close(y.double(), want_y, rtol=1e-4, atol=1e-4)
    got = ssd_cuda.op_backward(dy.float(), dfinal.float(), *args, pregate)
    for name, g in zip(_NAMES, got):
        want = grads.get(name)
        if want is None:
            assert g.numel() == 0, name  # absent input: an empty output, as the schema says
        else:
            torch.testing.assert_close(g.double(), want, rtol=1e-4, atol=1e-4, msg=lambda m: f"d{name}: {m}")


def test_a_failing_self_check_falls_back_to_the_reference(fake, monkeypatch):
    """A kernel that disagrees with the reference on the tiny problem: one warning, then the op's
    results come from the reference (here the extension's forward writes y 10% too large)."""
    _cuda_dispatch.reset_self_checks()
    real_forward = fake.forward

    def wrong_forward(params, stream):
        real_forward(params, stream)
        b, L, h, p = (params[k] for k in ("batch", "seqlen", "heads", "headdim"))
        model._contiguous(params["y"], (b, L, h, p), torch.float32).mul_(1.1)  # 10% off

    monkeypatch.setattr(fake, "forward", wrong_forward)
    q = {k: None if v is None else v.float() for k, v in _case_problem(CASES[4]).items()}
    args = [q[k] for k in ("x", "dt", "A", "B", "C")] + [64, q["D"], q["z"], q["dt_bias"], True, False, None]
    with pytest.warns(RuntimeWarning, match=r"ssd\[non-causal, z\]: the CUDA kernel failed its self-check"):
        y, final, _ = ssd_cuda.op_forward(*args, False)
    want_y, want_final = ssd_cuda.reference(*args[:11])
    torch.testing.assert_close(y, want_y)
    torch.testing.assert_close(final, want_final)
    _cuda_dispatch.reset_self_checks()


@pytest.mark.parametrize("dtype, rounding, causal", [(torch.float32, "tf32", True), (torch.float16, "float16", False),
                                                     (torch.bfloat16, "bfloat16", True)])
def test_self_check_tolerances_hold_the_kernels_operand_rounding(fake, monkeypatch, dtype, rounding, causal):
    """With every MMA operand tile rounded as the kernels round it (TF32 for float32 inputs, else the
    input's 16-bit type), the model passes the op's first-call self-check (`ssd_cuda._check`, its
    tolerances and tiny problem): the tolerances leave room for that rounding. Not a measurement of
    the GPU's error: fp32 accumulation and fast exp are not modelled."""
    monkeypatch.setattr(model, "operand_rounding", rounding)
    _cuda_dispatch.reset_self_checks()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed self-check warns
        assert ssd_cuda._check(dtype, torch.device("cpu"), causal, z=True)
    _cuda_dispatch.reset_self_checks()
