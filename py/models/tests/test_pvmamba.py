"""Tests of the PVMamba family (py/models/pvmamba.py) against /work/shared/specs/pvmamba.md section 7."""
import pytest
import torch
import torch.nn.functional as F

import py.models.pvmamba as pvm
from py.models.registry import create_model, list_models

# A reduced tiny (all three mixers, all three SaDSA flags 0/2/2/1) for the forward/backward tests.
SMALL = dict(embed_dim=32, depths=(1, 1, 4, 1), num_classes=10)


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _randomize_offsets(model, std=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, pvm.SpatialAdaptiveSampler) and m.sampling_offsets is not None:
                m.sampling_offsets.weight.copy_(torch.randn(m.sampling_offsets.weight.shape, generator=g) * 0.2)
                m.sampling_offsets.bias.copy_(torch.randn(m.sampling_offsets.bias.shape, generator=g) * std)


def test_registered():
    assert {"pvmamba_tiny", "pvmamba_small", "pvmamba_base"} <= set(list_models("pvmamba*"))


@pytest.mark.parametrize("name, expected, kwargs", [
    ("pvmamba_tiny", 24_288_328, {}),
    ("pvmamba_small", 40_116_348, {}),
    ("pvmamba_base", 88_849_900, {}),
    ("pvmamba_base", 88_884_170, {"num_heads": (3, 6, 12, 24)}),  # upstream in-file builder heads
])
def test_param_counts(name, expected, kwargs):
    model = create_model(name, **kwargs)
    assert _params(model) == expected
    n_offsets = sum(isinstance(m, torch.nn.Linear) and n.endswith("sampling_offsets")
                    for n, m in model.named_modules())
    assert n_offsets == (3 if name == "pvmamba_tiny" else 7)


def test_module_param_formulas():
    model = create_model("pvmamba_tiny")
    assert _params(model.patch_embed) == 110_240  # 26.5 E (E + 1)
    assert _params(model.layers[0].downsample) == 24 * 64 ** 2 + 94 * 64
    assert _params(model.layers[0].blocks[0].token_mixer) == 35_844
    mixers = [b.token_mixer for b in model.layers[2].blocks]
    assert [_params(m) for m in mixers[:3]] == [440_088, 435_984, 435_984]
    assert _params(model.layers[3].blocks[0].token_mixer) == 1_049_088
    assert _params(model.norm) + _params(model.head) == 514_024


def test_tiny_forward_224():
    torch.manual_seed(0)
    model = create_model("pvmamba_tiny").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


def test_init():
    model = create_model("pvmamba_tiny")
    mixer = model.layers[2].blocks[0].token_mixer
    dt = F.softplus(mixer.dt_bias)
    assert mixer.A_log.shape == (512,)
    assert ((dt >= 1e-3 - 1e-9) & (dt <= 0.1 + 1e-9)).all()
    A = -torch.exp(mixer.A_log)
    assert ((A >= -16) & (A <= -1)).all()
    assert (mixer.D == 1).all()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.bias is not None:
            assert (m.bias == 0).all()
    assert abs(model.layers[2].blocks[0].mlp.fc1.weight.std().item() - 0.02) < 0.002


def test_linear_equals_quadratic_form():
    torch.manual_seed(0)
    v = torch.randn(2, 4, 50, 8, dtype=torch.float64)
    Bm, Cm = torch.randn(2, 50, 16, dtype=torch.float64), torch.randn(2, 50, 16, dtype=torch.float64)
    lin, quad = pvm.nc_ssd_linear(v, Bm, Cm), pvm.nc_ssd_quadratic(v, Bm, Cm)
    assert lin.shape == (2, 4, 50, 8)
    torch.testing.assert_close(lin, quad, rtol=1e-10, atol=1e-10)
    # the same for the mixer's actual operands, in float32
    mixer = pvm.PVMambaMixer(32, 2, d_state=16, pattern="LoDSA")
    u = torch.randn(2, 36, 32)
    z, x, Bm, Cm, dA = mixer.project(u, 6, 6)
    v, _ = mixer.aggregate(x, dA, 6, 6)
    torch.testing.assert_close(mixer.state_product(v, Bm, Cm), pvm.nc_ssd_quadratic(v, Bm, Cm),
                               rtol=1e-4, atol=1e-5)


def test_state_backend_ssd_matches_matmul():
    torch.manual_seed(0)
    ref = pvm.PVMambaMixer(32, 2, d_state=16, pattern="SaDSA", spatial_flag=0)
    _randomize_offsets(ref)
    alt = pvm.PVMambaMixer(32, 2, d_state=16, pattern="SaDSA", spatial_flag=0, state_backend="ssd")
    alt.load_state_dict(ref.state_dict())
    u = torch.randn(2, 30, 32)
    torch.testing.assert_close(alt(u, 5, 6)[0], ref(u, 5, 6)[0], rtol=1e-4, atol=1e-5)


def test_lodsa_pooling():
    mixer = pvm.PVMambaMixer(16, 2, d_state=8, pattern="LoDSA")
    H, W, C = 4, 5, 32
    x = torch.randn(1, H * W, C)
    dA = -torch.rand(1, H * W, C)
    v, points = mixer.aggregate(x, dA, H, W, points=None)
    assert points is None
    prod = (dA * x).view(H, W, C)
    expect = torch.empty(H, W, C)
    for i in range(H):
        for j in range(W):
            expect[i, j] = prod[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].reshape(-1, C).mean(0)
    got = v.transpose(1, 2).reshape(H, W, C)  # (1, nh, L, P) -> channel h*P+p
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    const = torch.full((1, H * W, C), 2.0)
    v, _ = mixer.aggregate(const, torch.full_like(const, -0.5), H, W)
    torch.testing.assert_close(v, torch.full_like(v, -1.0))


@pytest.mark.parametrize("sampler", pvm.DSA_SAMPLERS)
def test_sadsa_zero_offsets_is_d_skip(sampler):
    torch.manual_seed(0)
    mixer = pvm.PVMambaMixer(32, 2, d_state=16, pattern="SaDSA", spatial_flag=0, dsa_sampler=sampler)
    with torch.no_grad():
        mixer.sa_op.sampling_offsets.weight.zero_()
        mixer.sa_op.sampling_offsets.bias.zero_()
        mixer.D.copy_(torch.tensor([0.7, -1.3]))
    H, W = 5, 7
    u = torch.randn(2, H * W, 32)
    z, x, Bm, Cm, dA = mixer.project(u, H, W)
    agg, points = mixer.sa_op(x, dA, H, W)
    assert points.shape == (2, H * W, 1, 1, 4, 2)
    assert agg.abs().max() < 1e-6  # every sample is the query pixel: x * (dA - dA) = 0
    out, _ = mixer(u, H, W)
    expect = mixer.out_proj(mixer.norm(x * mixer.D.repeat_interleave(mixer.headdim)) * z)
    torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-5)


def test_samplers_agree_pointwise():
    torch.manual_seed(0)
    B, H, W, C, K = 2, 5, 6, 24, 4
    value = torch.randn(B, H * W, C, dtype=torch.float64)
    loc = torch.rand(B, H * W, K, 2, dtype=torch.float64) * 1.4 - 0.2  # some samples fall outside
    a = pvm._sample_grid_sample(value, loc, H, W)
    b = pvm._sample_dcnv4(value, loc, H, W)
    assert a.shape == (B, C, H * W, K)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # and against an explicit bilinear loop at pixel (S * size - 0.5), zeros outside
    img = value.view(B, H, W, C)
    b_, l_, k_ = 1, 7, 2
    px, py = loc[b_, l_, k_, 0] * W - 0.5, loc[b_, l_, k_, 1] * H - 0.5
    x0, y0 = int(torch.floor(px)), int(torch.floor(py))
    acc = torch.zeros(C, dtype=torch.float64)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < H and 0 <= xx < W:
                acc += wy * wx * img[b_, yy, xx]
    torch.testing.assert_close(a[b_, :, l_, k_], acc)


def test_samplers_agree_in_model():
    torch.manual_seed(0)
    ref = create_model("pvmamba_tiny", **SMALL)
    _randomize_offsets(ref)
    alt = create_model("pvmamba_tiny", dsa_sampler="dcnv4", **SMALL)
    alt.load_state_dict(ref.state_dict())
    ref.eval(), alt.eval()
    x = torch.randn(2, 3, 48, 48)
    out_ref, out_alt = ref(x), alt(x)
    torch.testing.assert_close(out_alt, out_ref, rtol=1e-4, atol=1e-5)
    out_ref.square().sum().backward()
    out_alt.square().sum().backward()
    name = "layers.2.blocks.0.token_mixer.sa_op.sampling_offsets.weight"
    g_ref = dict(ref.named_parameters())[name].grad
    g_alt = dict(alt.named_parameters())[name].grad
    assert g_ref.abs().sum() > 0
    torch.testing.assert_close(g_alt, g_ref, rtol=1e-3, atol=1e-6)


def test_layer_multiplexing():
    torch.manual_seed(0)
    model = create_model("pvmamba_tiny", **SMALL)
    _randomize_offsets(model)
    flags = [b.token_mixer.sa_op.spatial_flag for b in model.layers[2].blocks]
    assert flags == [0, 2, 2, 1]
    assert model.layers[2].blocks[1].token_mixer.sa_op.sampling_offsets is None
    H = W = 4
    x = torch.randn(2, H * W, 128)
    points = None
    for i, blk in enumerate(model.layers[2].blocks):
        sa = blk.token_mixer.sa_op
        x_new, new_points = blk(x, H, W, points)
        if sa.spatial_flag == 2:
            assert new_points is points  # re-used bit-identically (same tensor)
        elif sa.spatial_flag == 1:
            xn = blk.token_mixer.project(blk.norm1(x + blk._cpe(blk.cpe1, x, H, W)), H, W)[1]
            delta = sa.sampling_offsets(xn).view(2, H * W, 1, 1, 4, 2) / torch.tensor([W, H])
            torch.testing.assert_close(new_points - points, delta, rtol=1e-4, atol=1e-6)
        x, points = x_new, new_points
    # attention resets the locations
    assert model.layers[3].blocks[0](torch.randn(1, 4, 256), 2, 2, points)[1] is None
    with pytest.raises(ValueError, match="spatial_flag=2"):
        model.layers[2].blocks[1].token_mixer(torch.randn(1, 16, 128), 4, 4, None)


def test_layout_quirk():
    B, nh, L, P = 2, 3, 5, 4
    agg = torch.randn(B, L, nh * P)
    off = pvm.dsa_layout(agg, nh, official=True)
    fixed = pvm.dsa_layout(agg, nh, official=False)
    assert off.shape == fixed.shape == (B, nh, L, P)
    for a in range(nh):
        for l in range(L):
            t, h = divmod(a * L + l, nh)
            torch.testing.assert_close(off[:, a, l], agg[:, t, h * P:(h + 1) * P], rtol=0, atol=0)
            torch.testing.assert_close(fixed[:, a, l], agg[:, l, a * P:(a + 1) * P], rtol=0, atol=0)
    assert not torch.equal(off, fixed)
    # the flag reaches the mixers and changes the output
    torch.manual_seed(0)
    m1 = create_model("pvmamba_tiny", **SMALL)
    _randomize_offsets(m1)
    m2 = create_model("pvmamba_tiny", official_layout=False, **SMALL)
    m2.load_state_dict(m1.state_dict())
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert not torch.allclose(m1.eval()(x), m2.eval()(x))


def test_features_only():
    model = create_model("pvmamba_tiny", features_only=True, **SMALL).eval()
    assert model.num_classes == 0 and model.head is None
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 128, 128))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    model = create_model("pvmamba_tiny", features_only=True, out_indices=(1, 2), **SMALL).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 8, 8), (1, 128, 4, 4)]


def test_small_and_odd_inputs():
    model = create_model("pvmamba_tiny", img_size=28, **SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 28, 28))  # grids 7 -> 4 -> 2 -> 1 (ceil halving)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        assert model.forward_features(torch.randn(1, 3, 28, 28)).shape == (1, 1, 1, 256)
        assert model(torch.randn(1, 3, 100, 76)).shape == (1, 10)
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(1, 1, 28, 28))


def test_head_api():
    model = create_model("pvmamba_tiny", **SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, 2, 2, 256)
        assert model.forward_head(feats, pre_logits=True).shape == (1, 256)
        torch.testing.assert_close(model.forward_head(feats), model(x))
    model.reset_classifier(5)
    assert model.num_classes == 5 and model(x).shape == (1, 5)
    assert {"A_log", "D", "dt_bias"} == {n.rsplit(".", 1)[-1] for n in model.no_weight_decay()}


def test_backward_sgd_step():
    torch.manual_seed(0)
    model = create_model("pvmamba_tiny", drop_path_rate=0.0, **SMALL)
    _randomize_offsets(model)
    model.train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss0 = F.cross_entropy(model(x), y)
    loss0.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["layers.2.blocks.0.token_mixer.sa_op.sampling_offsets.weight"].abs().sum() > 0
    assert grads["layers.0.blocks.0.token_mixer.A_log"].abs().sum() > 0
    opt.step()
    with torch.no_grad():
        loss1 = F.cross_entropy(model(x), y)
    assert loss1.item() != loss0.item()
