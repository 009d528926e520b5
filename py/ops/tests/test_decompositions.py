"""py.ops.decompositions: the chunked selective scan against the float64 sequential reference, and
every decomposition against its custom op (same schema, same results)."""
import importlib

import pytest
import torch

from py.ops import decompositions as dec

ss = importlib.import_module("py.ops.selective_scan")  # the module (py.ops exports the function)
F64 = torch.float64


def make(batch, dim, L, N, groups, seed=0, D=True, z=True, bias=True, bc3=False, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=F64)
    bc = (batch, N, L) if bc3 else (batch, groups, N, L)
    t = dict(u=rnd(batch, dim, L), delta=rnd(batch, dim, L) * 0.5,
             A=-(torch.rand(dim, N, generator=g, dtype=F64) + 0.2), B=rnd(*bc), C=rnd(*bc),
             D=rnd(dim) if D else None, z=rnd(batch, dim, L) if z else None,
             delta_bias=rnd(dim) * 0.3 if bias else None)
    return {k: None if v is None else v.to(dtype) for k, v in t.items()}


def rel_err(got, want):
    if want.numel() == 0:
        return 0.0
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


CASES = [  # batch, dim, L, N, groups, chunk, D, z, bias, softplus, B/C 3-D
    (2, 8, 37, 1, 2, 16, True, False, True, True, False),     # VMamba-like N = 1, groups, L % chunk != 0
    (1, 4, 197, 16, 1, 16, True, True, True, True, True),     # Vim-like N = 16, 3-D B/C, z gate
    (2, 6, 64, 3, 3, 16, False, False, False, False, False),  # L % chunk == 0, no options, softplus off
    (1, 5, 7, 2, 1, 16, True, True, True, True, False),       # L < chunk: one short chunk
    (1, 4, 9, 2, 2, 1, True, False, True, True, False),       # chunk 1: the state loop alone
    (1, 3, 1, 4, 1, 8, True, True, False, True, False),       # L = 1
    (1, 3, 0, 4, 1, 8, True, True, True, True, False),        # L = 0: empty y, zero state
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}d{}L{}N{}g{}Q{}".format(*c[:6]))
def test_chunked_selective_scan_matches_the_sequential_reference(case):
    batch, dim, L, N, groups, chunk, D, z, bias, softplus, bc3 = case
    t = make(batch, dim, L, N, groups, D=D, z=z, bias=bias, bc3=bc3)
    want_y, want_h = ss.selective_scan_reference(**t, delta_softplus=softplus, return_last_state=True)
    got_y, got_h = dec.selective_scan_chunked(**t, delta_softplus=softplus, chunk_size=chunk)
    assert got_y.shape == want_y.shape and got_h.shape == want_h.shape == (batch, dim, N)
    assert got_y.dtype == got_h.dtype == F64
    assert rel_err(got_y, want_y) < 1e-12
    assert rel_err(got_h, want_h) < 1e-12


def test_chunked_selective_scan_is_stable_under_extreme_decays():
    """Per-step log-decays from -6000 (δ ≈ 20 times A = -300) to +0.1 (A > 0, softplus off): the
    segment sums are taken over masked cumulative sums, never as differences of large cumulative
    sums, so nothing overflows or cancels (a chunk of -6000 steps decays to exactly 0)."""
    t = make(2, 12, 150, 4, 2, seed=3)
    g = torch.Generator().manual_seed(4)
    t["delta"] = torch.rand(2, 12, 150, generator=g, dtype=F64) * 20
    t["A"] = torch.linspace(-300.0, 0.005, 12 * 4, dtype=F64).view(12, 4)
    t["delta_bias"] = None
    want_y, want_h = ss.selective_scan_reference(**t, return_last_state=True)
    got_y, got_h = dec.selective_scan_chunked(**t)
    assert torch.isfinite(got_y).all() and torch.isfinite(got_h).all()
    assert rel_err(got_y, want_y) < 1e-12 and rel_err(got_h, want_h) < 1e-12


def test_chunked_selective_scan_float32_keeps_the_dtype():
    t = make(1, 8, 100, 16, 2, seed=5)
    want_y, want_h = ss.selective_scan_reference(**t, delta_softplus=True, return_last_state=True)
    got_y, got_h = dec.selective_scan_chunked(**{k: None if v is None else v.float() for k, v in t.items()},
                                              delta_softplus=True)
    assert got_y.dtype == got_h.dtype == torch.float32
    assert rel_err(got_y, want_y) < 1e-5 and rel_err(got_h, want_h) < 1e-5


# ----------------------------------------------------------------------------------------------
# Each decomposition against its custom op: same argument order (the op's schema) and outputs
# ----------------------------------------------------------------------------------------------
def _op_args():
    g = torch.Generator().manual_seed(6)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)
    sel = make(2, 6, 45, 4, 3, seed=7)
    # ssd: x (b, L, h, p), dt (b, L, h), A (h,), B/C (b, L, g, n), chunk 8, D (h, p), z, dt_bias
    ssd_causal = (r(2, 21, 4, 3), r(2, 21, 4) * 0.5, -torch.rand(4, generator=g, dtype=F64), r(2, 21, 2, 5),
                  r(2, 21, 2, 5), 8, r(4, 3), r(2, 21, 4, 3), r(4), True, True, r(2, 4, 3, 5))
    ssd_nc = ssd_causal[:9] + (True, False, None)
    om = r(2, 5, 6, 8 * 9) * 0.7  # 3x3 kernel, stride 1, pad 1: value 5x6 -> 5x6; P = 72 >= 3*2*9 = 54
    return {
        "selective_scan": (sel["u"], sel["delta"], sel["A"], sel["B"], sel["C"], sel["D"], sel["z"],
                           sel["delta_bias"], True),
        "ssd causal": ssd_causal,
        "ssd non-causal": ssd_nc,
        "dcnv4": (r(2, 5, 6, 2 * 4), om, 3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 0.9, False),
        "cross_scan": (r(2, 3, 4, 5),),
        "cross_merge": (r(2, 4, 3, 4, 5),),
    }


@pytest.mark.parametrize("case", sorted(_op_args()))
def test_decomposition_equals_its_custom_op(case):
    name = case.split()[0]
    args = _op_args()[case]
    op = getattr(torch.ops.visionssm, name).default
    table = dec.decomposition_table()
    want, got = op(*args), table[op](*args)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w.numel() == 0:  # a backward residual: empty without save_for_backward
            assert g.numel() == 0
            continue
        assert g.shape == w.shape and g.dtype == w.dtype
        assert rel_err(g, w) < 1e-10


def test_table_covers_every_forward_op():
    """Each visionssm op that is not a backward has a decomposition (the ONNX export relies on it)."""
    import py.ops  # noqa: F401  (registers the ops)
    names = {n for n in dir(torch.ops.visionssm) if not n.startswith("_") and not n.endswith("_backward")}
    names = {n for n in names if isinstance(getattr(torch.ops.visionssm, n), torch._ops.OpOverloadPacket)}
    assert names == set(dec.FUNCTIONS)
