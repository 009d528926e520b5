"""Tests for py.models.flops.count_flops (fvcore conventions + py.ops' own formulas)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from py.models.flops import count_flops
from py.ops._common import flop_recording, op_scope


class _FakeOp(nn.Module):
    """Stands in for a py.ops op: reports 1234 FLOPs via op_scope and runs counted aten ops inside."""

    def forward(self, x):
        with op_scope("fake_op", lambda: 1234):
            with op_scope("fake_op", lambda: 10 ** 9):  # nested public op: not counted again
                y = x.flatten(1) @ torch.ones(x[0].numel(), 7)
            y = F.linear(y, torch.ones(3, 7)) + torch.einsum("bi,bj->bij", y, y).sum()
        return y


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.ln_plain = nn.LayerNorm(8, elementwise_affine=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        self.fake = _FakeOp()

    def forward(self, x):
        x = self.gn(self.bn(self.dw(self.conv(x))))
        t = self.ln_plain(self.ln(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        seq = t.flatten(2)  # (B, 8, 36)
        extra = torch.einsum("bcl,bdl->bcd", seq, seq).sum() + (seq @ seq.transpose(1, 2)).sum()
        extra = extra + F.scaled_dot_product_attention(seq[:, None], seq[:, None], seq[:, None]).sum()
        extra = extra + F.interpolate(t, scale_factor=2, mode="bilinear").sum()
        extra = extra + F.interpolate(t, scale_factor=2, mode="nearest").sum()
        extra = extra + F.relu(t).mean() + torch.softmax(seq, -1).sum()  # not counted
        return self.fc(self.pool(t).flatten(1)) + extra + self.fake(t).sum()


def test_counts_each_op_with_fvcore_formula():
    b, c, hw = 2, 8, 36
    result = count_flops(_Net(), input_size=(3, 6, 6), batch_size=b)
    numel = b * c * hw
    expected = {
        "conv": b * (8 * 3 * 9) * hw + b * (8 * 1 * 9) * hw,  # bias not counted; depthwise
        "batch_norm": 2 * numel,  # eval mode, affine
        "group_norm": 5 * numel,
        "layer_norm": 5 * numel + 4 * numel,  # affine + plain
        "einsum": b * c * c * hw,
        "matmul": b * c * hw * c,
        "scaled_dot_product_attention": b * 1 * c * c * (hw + hw),
        "upsample_bilinear2d": 4 * 4 * numel,
        "upsample_nearest2d": 4 * numel,
        "adaptive_avg_pool2d": numel,
        "linear": b * 8 * 5,
        "fake_op": 1234,
    }
    assert result["by_op"] == expected
    assert result["total"] == sum(expected.values())
    assert result["params"] == sum(p.numel() for p in _Net().parameters())


def test_matmul_follows_fvcore_broadcast_formula():
    class M(nn.Module):
        def forward(self, x):  # (2, 1, 4, 5) @ (2, 3, 5, 6): fvcore counts prod(a.shape) * 6
            return x @ torch.ones(2, 3, 5, 6), torch.ones(7, 2) @ x[0, 0, 0, :2].view(2, 1)

    result = count_flops(M(), input_size=(1, 4, 5), batch_size=2)
    assert result["by_op"] == {"matmul": 2 * 1 * 4 * 5 * 6 + 7 * 2 * 1}


def test_batch_norm_training_formula_and_mode_restored():
    model = nn.Sequential(nn.BatchNorm2d(4), nn.InstanceNorm2d(4))
    model.train()
    result = count_flops(model, input_size=(4, 3, 3))
    # counted in eval mode: BN 2/elt (affine); InstanceNorm uses batch statistics: 4/elt (no affine)
    assert result["by_op"] == {"batch_norm": 2 * 36 + 4 * 36}
    assert model.training


def test_op_scope_without_counter_is_transparent():
    with op_scope("fake_op", lambda: 1 / 0):  # flops_fn is never evaluated outside flop_recording()
        pass
    with flop_recording() as recorder:
        with op_scope("fake_op", lambda: 5):
            assert recorder.inside_op == 1
        assert recorder.inside_op == 0
    assert recorder.by_op == {"fake_op": 5}


def test_custom_inputs():
    model = nn.Conv2d(3, 4, 1, bias=False)
    assert count_flops(model, inputs=torch.randn(3, 3, 5, 7))["total"] == 3 * 12 * 35


# ------------------------------------------------------------------------------------------------
# VMamba-T[s1l8] at 224: 4.905609984 GFLOPs (spec §1.6, §9 item 11)
# ------------------------------------------------------------------------------------------------
def _vmamba_closed_form(dims, depths, ssm_ratio, d_state, size, num_classes=1000, k=4):
    """Spec §1.6 per-part FLOP formulas (fvcore + 9BLDN), for a square input of side `size`."""
    c0, s2, s4 = dims, size // 2, size // 4
    total = 3 * (c0 // 2) * 9 * s2 * s2 + 5 * (c0 // 2) * s2 * s2 + (c0 // 2) * c0 * 9 * s4 * s4 + 5 * c0 * s4 * s4
    scan = 0
    side = s4
    for i, depth in enumerate(depths):
        c, tokens = c0 * 2 ** i, side * side
        di, r, n = int(ssm_ratio * c), math.ceil(c / 16), d_state
        scan += depth * (9 * n + 1) * k * di * tokens
        block = (5 * c * tokens + c * di * tokens + 9 * di * tokens + k * (r + 2 * n) * di * tokens
                 + k * di * r * tokens + (9 * n + 1) * k * di * tokens + 5 * di * tokens + di * c * tokens
                 + 5 * c * tokens + 8 * c * c * tokens)
        total += depth * block
        if i < len(depths) - 1:
            side = (side + 1) // 2
            total += 9 * c * 2 * c * side * side + 5 * 2 * c * side * side
    c_last = c0 * 2 ** (len(depths) - 1)
    total += 5 * c_last * side * side + c_last * side * side + c_last * num_classes
    return total, scan


def _with_selective_scan_flops(monkeypatch):
    """Until py.ops.selective_scan reports its FLOPs itself, wrap the model's call in op_scope."""
    import py.models.vmamba as vmamba

    original = vmamba.selective_scan
    u, delta = torch.randn(1, 2, 3), torch.rand(1, 2, 3)
    with flop_recording() as recorder:
        original(u, delta, -torch.ones(2, 1), torch.randn(1, 1, 3), torch.randn(1, 1, 3), D=torch.ones(2))
    if recorder.by_op:
        assert recorder.by_op == {"selective_scan": 9 * 3 * 2 * 1 + 2 * 3}
        return

    def selective_scan(u, delta, A, B, C, D=None, z=None, **kwargs):
        batch, dim, length = u.shape
        flops = 9 * batch * length * dim * A.shape[1] + batch * dim * length * ((D is not None) + (z is not None))
        with op_scope("selective_scan", lambda: flops):
            return original(u, delta, A, B, C, D=D, z=z, **kwargs)

    monkeypatch.setattr(vmamba, "selective_scan", selective_scan)


def test_vmamba_tiny_flops_224_exact(monkeypatch):
    from py.models.registry import create_model

    _with_selective_scan_flops(monkeypatch)
    expected, expected_scan = _vmamba_closed_form(96, (2, 2, 8, 2), 1.0, 1, 224)
    assert expected == 4_905_609_984
    result = count_flops(create_model("vmamba_tiny_s1l8"))
    print(f"vmamba_tiny_s1l8 @224: {result['total'] / 1e9:.9f} GFLOPs, by op {result['by_op']}")
    assert result["total"] == 4_905_609_984
    assert result["by_op"]["selective_scan"] == expected_scan
    assert set(result["by_op"]) == {"conv", "layer_norm", "selective_scan", "adaptive_avg_pool2d", "linear"}
    assert result["params"] == 30_249_064


def test_vmamba_flops_other_size_matches_closed_form(monkeypatch):
    from py.models.registry import create_model

    _with_selective_scan_flops(monkeypatch)
    model = create_model("vmamba_small_s2l15", img_size=96, depths=(1, 1, 2, 1))
    expected, _ = _vmamba_closed_form(96, (1, 1, 2, 1), 2.0, 1, 96)
    assert count_flops(model, input_size=(3, 96, 96))["total"] == expected
