"""Tests for py/models/vim.py (spec /work/shared/specs/dyvm.md sections 1-2 and 9)."""
import math

import pytest
import torch
import torch.nn.functional as F

import py.models.vim  # noqa: F401  (registers the models)
from py.models.registry import create_model
from py.models.vim import BiMamba

EXPECTED_PARAMS = {"vim_tiny": 7_148_008, "vim_small": 25_796_584, "vim_base": 97_598_440}
PER_LAYER = {"vim_tiny": 282_048, "vim_small": 1_043_328, "vim_base": 4_003_584}


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_param_counts(name):
    with torch.device("meta"):  # shapes only: fast for the big variants
        model = create_model(name)
    assert _n_params(model) == EXPECTED_PARAMS[name]
    assert _n_params(model.layers[0]) == PER_LAYER[name]
    d = model.embed_dim
    assert model.pos_embed.shape == (1, 197, d)
    assert model.cls_pos == 98


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("vim_tiny").eval()


def test_forward_224_finite(tiny):
    with torch.no_grad():
        out = tiny(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


def test_cls_token_in_middle(tiny):
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        seq = tiny.embed(x)
        patches = tiny.patch_embed(x)
    assert seq.shape == (1, 197, 192)
    torch.testing.assert_close(seq[:, 98], (tiny.cls_token + tiny.pos_embed[:, 98])[:, 0])
    torch.testing.assert_close(seq[:, 99], patches[:, 98] + tiny.pos_embed[:, 99])


def test_init(tiny):
    mixer = tiny.layers[3].mixer
    for dt_proj in (mixer.dt_proj, mixer.dt_proj_b):
        dt = F.softplus(dt_proj.bias)
        assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
        assert dt_proj.weight.abs().max() <= mixer.dt_rank ** -0.5
    a = -torch.exp(mixer.A_b_log)
    torch.testing.assert_close(a, -torch.arange(1, 17.0).repeat(384, 1))
    assert torch.equal(mixer.D, torch.ones(384)) and torch.equal(tiny.layers[0].norm.weight, torch.ones(192))
    # out_proj: kaiming_uniform(a=sqrt5) bound 1/sqrt(fan_in), then / sqrt(24)
    assert mixer.out_proj.weight.abs().max() <= 1 / math.sqrt(384) / math.sqrt(24)
    assert torch.equal(tiny.head.bias, torch.zeros(1000))


def test_bidirectional_causality():
    torch.manual_seed(0)
    mixer = BiMamba(16, d_state=4).eval()
    xz = torch.randn(2, 2 * mixer.d_inner, 12)
    xz2 = xz.clone()
    j = 5
    xz2[:, :, j] += 1.0
    with torch.no_grad():
        f1, f2 = mixer.ssm_branch(xz), mixer.ssm_branch(xz2)
        b1, b2 = mixer.ssm_branch(xz.flip(-1), True).flip(-1), mixer.ssm_branch(xz2.flip(-1), True).flip(-1)
    torch.testing.assert_close(f1[..., :j], f2[..., :j], rtol=0, atol=0)
    torch.testing.assert_close(b1[..., j + 1:], b2[..., j + 1:], rtol=0, atol=0)
    assert not torch.allclose(f1[..., j:], f2[..., j:]) and not torch.allclose(b1[..., :j + 1], b2[..., :j + 1])


def test_small_input_patch_override():
    torch.manual_seed(0)
    model = create_model("vim_tiny", num_classes=10, img_size=28, patch_size=4, depth=4).eval()
    assert model.grid_size == (7, 7) and model.pos_embed.shape == (1, 50, 192) and model.cls_pos == 24
    with torch.no_grad():
        out = model(torch.randn(2, 3, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # stride override: patch 8 stride 4 on 28 -> (28-8)//4+1 = 6
    model = create_model("vim_tiny", num_classes=0, img_size=28, patch_size=8, stride=4, depth=2)
    assert model.grid_size == (6, 6)
    assert model.forward_head(model.forward_features(torch.randn(1, 3, 28, 28))).shape == (1, 192)


def test_bad_sizes():
    with pytest.raises(ValueError, match="patch grid"):
        create_model("vim_tiny", img_size=230, depth=1)
    with pytest.raises(ValueError, match="patch grid"):
        create_model("vim_tiny", img_size=8, depth=1)
    model = create_model("vim_tiny", img_size=32, depth=1)
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 64, 64))


def test_features_only():
    model = create_model("vim_tiny", img_size=64, features_only=True, depth=4, out_indices=(1, -1)).eval()
    assert model.out_indices == (1, 3)
    assert model.feature_info.reduction() == [16, 16]
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 192, 4, 4)] * 2
    assert all(torch.isfinite(f).all() for f in feats)
    default = create_model("vim_tiny", img_size=32, features_only=True)
    assert default.out_indices == (5, 11, 17, 23)


def test_reset_classifier():
    model = create_model("vim_tiny", img_size=32, depth=1)
    model.reset_classifier(7)
    assert model.num_classes == 7
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_backward_sgd_step():
    torch.manual_seed(0)
    model = create_model("vim_tiny", num_classes=5, img_size=32, patch_size=8, depth=2, embed_dim=64)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss0 = F.cross_entropy(model(x), y)
    loss0.backward()
    for name in ("layers.1.mixer.A_b_log", "layers.0.mixer.conv1d.weight", "layers.1.mixer.dt_proj_b.bias",
                 "cls_token", "pos_embed"):
        g = dict(model.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name
    opt.step()
    with torch.no_grad():
        loss1 = F.cross_entropy(model(x), y)
    assert torch.isfinite(loss1) and abs(loss1.item() - loss0.item()) > 1e-4


def test_create_model_defaults_come_from_the_model():
    import torch
    from py.models import create_model
    digits = create_model("vim_mnist")  # 28×28, 1 channel, 10 classes without being told
    assert digits.default_cfg["input_size"] == (1, 28, 28) and digits.num_classes == 10
    assert digits(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert create_model("vim_tiny", depth=2).default_cfg["input_size"] == (3, 224, 224)
