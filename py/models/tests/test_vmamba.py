"""Tests for py.models.vmamba: exact parameter counts, forward at several sizes, features_only, size
errors, the two SS2D mixers against per-direction sequential recurrences, and a training step."""
import math

import pytest
import torch
import torch.nn.functional as F

import py.models.vmamba as vmamba
from py.models.registry import create_model, list_models

EXPECTED_PARAMS = {  # spec §1.6 / §9 item 10
    "vmamba_tiny_s1l8": 30_249_064,
    "vmamba_small_s2l15": 50_147_752,
    "vmamba_base_s2l15": 88_557_800,
}


def _num_params(model):
    return sum(p.numel() for p in model.parameters())


def _build_on_meta(name, **overrides):
    """Builds without allocating or initializing weights (fast): enough to count parameters."""
    with torch.device("meta"):
        return create_model(name, **overrides)


def _closed_form_params(dims, depths, ssm_ratio, d_state, mamba2=False, num_classes=1000, k=4):
    """Parameter count from the module definitions (spec §1.6 per-block formula; §1.8 for m0)."""
    c0 = dims
    total = 3 * (c0 // 2) * 9 + c0 // 2 + c0  # stem conv1 + LN(C/2)
    total += (c0 // 2) * c0 * 9 + c0 + 2 * c0  # stem conv2 + LN(C)
    for i, depth in enumerate(depths):
        c = c0 * 2 ** i
        di, r, n = int(ssm_ratio * c), math.ceil(c / 16), d_state
        if mamba2:  # A_logs (K, R), Ds (K, Di), dt bias (K, R), no dt_proj weight
            mixer = c * di + 9 * di + k * (r + 2 * n) * di + k * r + k * di + k * r + 2 * di + di * c
        else:
            mixer = c * di + 9 * di + k * (r + 2 * n) * di + k * di * r + k * di + k * di * n + k * di \
                + 2 * di + di * c
        total += depth * (2 * c + mixer + 2 * c + 8 * c * c + 5 * c)
        if i < len(depths) - 1:
            total += c * 2 * c * 9 + 2 * c + 2 * 2 * c  # downsample conv3x3 + LN(2C)
    c_last = c0 * 2 ** (len(depths) - 1)
    return total + 2 * c_last + c_last * num_classes + num_classes


def test_registered_names():
    assert set(list_models("vmamba_*")) >= set(EXPECTED_PARAMS) | {"vmamba_tiny_ssd"}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_param_counts_exact(name):
    cfg = vmamba.MODEL_CFGS[name]
    assert _closed_form_params(cfg["dims"], cfg["depths"], cfg["ssm_ratio"], cfg["ssm_d_state"]) \
        == EXPECTED_PARAMS[name]
    assert _num_params(_build_on_meta(name)) == EXPECTED_PARAMS[name]


def test_ssd_variant_param_count():
    cfg = vmamba.MODEL_CFGS["vmamba_tiny_ssd"]
    count = _num_params(_build_on_meta("vmamba_tiny_ssd"))
    print(f"vmamba_tiny_ssd parameters: {count:,}")
    assert count == _closed_form_params(cfg["dims"], cfg["depths"], cfg["ssm_ratio"], cfg["ssm_d_state"],
                                        mamba2=True) == 25_340_296


def test_param_count_on_cpu_build():
    assert _num_params(create_model("vmamba_tiny_s1l8")) == EXPECTED_PARAMS["vmamba_tiny_s1l8"]


def test_tiny_forward_224():
    torch.manual_seed(0)
    model = create_model("vmamba_tiny_s1l8").eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 1000)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["vmamba_tiny_s1l8", "vmamba_tiny_ssd"])
def test_forward_small_size(name):
    torch.manual_seed(0)
    model = create_model(name, img_size=64).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 1000)
    assert torch.isfinite(logits).all()
    assert model.default_cfg["input_size"] == (3, 64, 64)


def test_head_interface():
    model = create_model("vmamba_tiny_s1l8", img_size=32, depths=(1, 1, 1, 1), dims=16).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, 128, 1, 1)
        assert model.forward_head(feats, pre_logits=True).shape == (1, 128)
        model.reset_classifier(7)
        assert model.num_classes == 7 and model(x).shape == (1, 7)
        model.reset_classifier(0)
        assert model(x).shape == (1, 128)
    assert {n.rsplit(".", 1)[-1] for n in model.no_weight_decay()} == {"A_logs", "Ds"}


def test_features_only_strides_224():
    model = create_model("vmamba_tiny_s1l8", features_only=True, depths=(1, 1, 1, 1)).eval()
    assert not hasattr(model, "classifier")
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape) for f in feats] == [(1, 96, 56, 56), (1, 192, 28, 28), (1, 384, 14, 14),
                                               (1, 768, 7, 7)]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    partial = create_model("vmamba_tiny_s1l8", features_only=True, out_indices=(1, 2), depths=(1, 1, 1, 1))
    with torch.no_grad():
        feats = partial.eval()(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 192, 8, 8), (1, 384, 4, 4)]


def test_small_input_28():
    torch.manual_seed(0)
    # patch_size 2: token grids 14, 7, 4, 2 (the "v3" downsample rounds 7 up to 4)
    model = create_model("vmamba_tiny_s1l8", img_size=28, patch_size=2, num_classes=10, dims=32,
                         depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    backbone = create_model("vmamba_tiny_s1l8", img_size=28, patch_size=2, features_only=True, dims=32,
                            depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        assert [f.shape[-1] for f in backbone(torch.randn(1, 3, 28, 28))] == [14, 7, 4, 2]
    # the default patch_size 4 also runs at 28 (7, 4, 2, 1)
    model4 = create_model("vmamba_tiny_s1l8", img_size=28, num_classes=10, dims=32, depths=(1, 1, 1, 1))
    with torch.no_grad():
        assert model4.eval()(torch.randn(1, 3, 28, 28)).shape == (1, 10)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="multiple of patch_size=4"):
        create_model("vmamba_tiny_s1l8", img_size=30)
    model = create_model("vmamba_tiny_s1l8", img_size=32, depths=(1, 1, 1, 1), dims=16).eval()
    with pytest.raises(ValueError, match="multiple of patch_size=4"):
        model(torch.randn(1, 3, 32, 30))
    with pytest.raises(ValueError, match="even patch_size"):
        create_model("vmamba_tiny_s1l8", patch_size=3, img_size=33)
    with pytest.raises(ValueError, match="forward_type"):
        create_model("vmamba_tiny_s1l8", forward_type="v3")


def test_linear2d_loads_conv_weights():
    layer = vmamba.Linear2d(4, 3, bias=False)
    weight = torch.randn(3, 4, 1, 1)
    layer.load_state_dict({"weight": weight})
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(layer(x), F.conv2d(x, weight))


# ------------------------------------------------------------------------------------------------
# Mixers against an independent per-direction sequential recurrence (spec §2.1, §3.1, §4.1)
# ------------------------------------------------------------------------------------------------
def _direction_orders(h, w):
    """orders[k][l]: raster index (row * W + col) of the pixel that direction k visits at step l."""
    raster = torch.arange(h * w)
    column_major = raster.view(h, w).t().reshape(-1)
    return [raster, column_major, raster.flip(0), column_major.flip(0)]


def _mixer_input(m, x):
    u = F.conv2d(x, m.in_proj.weight[:, :, None, None])
    z = None
    if m.with_z:
        u, z = u.chunk(2, dim=1)
        z = m.act(z)
    return m.act(m.conv2d(u)), z


def _mixer_output(m, y, z):
    y = F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],), m.out_norm.weight, m.out_norm.bias, 1e-5)
    y = y.permute(0, 3, 1, 2)
    if z is not None:
        y = y * z
    return F.conv2d(y, m.out_proj.weight[:, :, None, None])


def _ss2d_reference(m, x):
    u, z = _mixer_input(m, x)
    b, d, h, w = u.shape
    r, n = m.dt_rank, m.d_state
    flat = u.reshape(b, d, h * w)
    a = -torch.exp(m.A_logs).view(4, d, n)
    skip = m.Ds.view(4, d)
    y = torch.zeros_like(flat)
    for k, order in enumerate(_direction_orders(h, w)):
        seq = flat[:, :, order]
        dt_low, bs, cs = torch.einsum("cd,bdl->bcl", m.x_proj_weight[k], seq).split([r, n, n], dim=1)
        delta = F.softplus(torch.einsum("dr,brl->bdl", m.dt_projs_weight[k], dt_low)
                           + m.dt_projs_bias[k][None, :, None])
        state = flat.new_zeros(b, d, n)
        outs = []
        for t in range(h * w):
            dl = delta[:, :, t, None]
            state = torch.exp(dl * a[k]) * state + dl * bs[:, None, :, t] * seq[:, :, t, None]
            outs.append((state * cs[:, None, :, t]).sum(-1) + skip[k] * seq[:, :, t])
        y[:, :, order] += torch.stack(outs, dim=-1)
    return _mixer_output(m, y.view(b, d, h, w), z)


def _ss2d_mamba2_reference(m, x):
    u, z = _mixer_input(m, x)
    b, d, h, w = u.shape
    heads, p, n = m.dt_rank, m.headdim, m.d_state
    flat = u.reshape(b, d, h * w)
    y = torch.zeros_like(flat)
    for k, order in enumerate(_direction_orders(h, w)):
        seq = flat[:, :, order]
        dt, bs, cs = torch.einsum("cd,bdl->bcl", m.x_proj_weight[k], seq).split([heads, n, n], dim=1)
        dt = F.softplus(dt + m.dt_projs_bias[k][None, :, None])  # (b, heads, L)
        a = -torch.exp(m.A_logs[k])  # (heads,)
        xs = seq.view(b, heads, p, h * w)
        state = flat.new_zeros(b, heads, p, n)
        outs = []
        for t in range(h * w):
            dtt = dt[:, :, t, None, None]
            state = torch.exp(dtt * a[:, None, None]) * state \
                + dtt * xs[:, :, :, t, None] * bs[:, None, None, :, t]
            outs.append((state * cs[:, None, None, :, t]).sum(-1) + m.Ds[k] * xs[:, :, :, t])
        y[:, :, order] += torch.stack(outs, dim=-1).reshape(b, d, h * w)
    return _mixer_output(m, y.view(b, d, h, w), z)


def _randomize_ssm_params(m):
    with torch.no_grad():
        m.A_logs.copy_(0.5 * torch.randn_like(m.A_logs))
        m.Ds.copy_(torch.randn_like(m.Ds))
        m.dt_projs_bias.copy_(0.5 * torch.randn_like(m.dt_projs_bias))
        m.out_norm.weight.copy_(1 + 0.1 * torch.randn_like(m.out_norm.weight))


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("with_z", [False, True])
def test_ss2d_matches_sequential_recurrence(backend, with_z):
    torch.manual_seed(0)
    m = vmamba.SS2D(8, d_state=2, ssm_ratio=1.5, dt_rank=3, with_z=with_z, backend=backend).double()
    _randomize_ssm_params(m)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(m(x), _ss2d_reference(m, x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_ss2d_mamba2_matches_sequential_recurrence(backend):
    torch.manual_seed(0)
    # 2 heads of headdim 4 per direction, d_state 3, chunk 4 over L = 15 tokens (a partial last chunk)
    m = vmamba.SS2DMamba2(8, d_state=3, ssm_ratio=1.0, dt_rank=2, chunk_size=4, backend=backend).double()
    _randomize_ssm_params(m)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(m(x), _ss2d_mamba2_reference(m, x), rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vmamba_tiny_s1l8", "vmamba_tiny_ssd"])
def test_sgd_step_reduces_loss(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=32, dims=16, depths=(1, 1, 1, 1), drop_path_rate=0.0)
    x, target = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss0 = F.cross_entropy(model(x), target)
    loss0.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    for suffix in ("A_logs", "Ds", "dt_projs_bias", "x_proj_weight"):
        grad = model.get_parameter(f"layers.0.blocks.0.op.{suffix}").grad
        assert grad.abs().sum() > 0, suffix
    optimizer.step()
    with torch.no_grad():
        loss1 = F.cross_entropy(model(x), target)
    assert loss1 < loss0
