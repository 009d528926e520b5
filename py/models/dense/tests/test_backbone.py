"""DenseBackbone (py/models/dense/backbone.py): pyramid shapes of every family, frozen stages, and
loading classification / official detection checkpoints (spec dense.md §1.2, §6.1, §8.3, §8.4)."""
import math

import pytest
import torch

from py.models import create_model, interop
from py.models.dense.backbone import DenseBackbone, build_backbone
from py.models.weights import WeightsError

torch.set_num_threads(1)

# Tiny configs of each family (model kwargs); Vim/DyVM at img_size 64 (a 4x4 grid of 16-pixel patches).
TINY = {
    "vmamba": ("vmamba_tiny_s1l8", dict(dims=16, depths=(1, 1, 1, 1))),
    "pvmamba": ("pvmamba_tiny", dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))),
    "vim": ("vim_tiny", dict(embed_dim=32, depth=4, img_size=64)),
    "dyvm": ("dyvm_vim_tiny", dict(embed_dim=32, depth=4, img_size=64, pruning_loc=(1, 3))),
}


def _backbone(family, seed=0, **extra):
    name, kwargs = TINY[family]
    torch.manual_seed(seed)
    return DenseBackbone(name, **{**kwargs, **extra})


def _classifier(family, seed=1, **extra):
    """The classification model the backbone comes from (a checkpoint source)."""
    name, kwargs = TINY[family]
    torch.manual_seed(seed)
    return create_model(name, num_classes=5, **{**kwargs, **extra})


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("size", [(64, 64), (61, 45), (33, 62)])
def test_pyramid_shapes_and_strides(family, size):
    backbone = _backbone(family).eval()
    assert backbone.strides == [4, 8, 16, 32]
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = backbone(x)
    assert len(feats) == 4
    for f, c, s in zip(feats, backbone.channels, backbone.strides):
        assert f.shape == (2, c, math.ceil(size[0] / s), math.ceil(size[1] / s))
        assert torch.isfinite(f).all()


def test_channels_per_family():
    assert _backbone("vmamba").channels == [16, 32, 64, 128]
    assert _backbone("pvmamba").channels == [16, 32, 64, 128]
    assert _backbone("vim").channels == [32] * 4


def test_vmamba_tiny_sizes_at_1280x800():
    # Sizes come from the stem and downsamples only, so VMamba-T's dims with one block per stage suffice.
    backbone = build_backbone("vmamba_tiny_s1l8", depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 1280, 800))
    assert [tuple(f.shape) for f in feats] == [(1, 96, 320, 200), (1, 192, 160, 100), (1, 384, 80, 50),
                                               (1, 768, 40, 25)]


def test_hierarchical_taps_are_the_model_outputs():
    backbone = _backbone("pvmamba").eval()
    x = torch.randn(1, 3, 61, 45)
    with torch.no_grad():
        for got, want in zip(backbone(x), backbone.model(x)):
            torch.testing.assert_close(got, want)


def test_vim_pads_to_its_grid_and_rejects_larger_inputs():
    backbone = _backbone("vim").eval()
    x = torch.randn(1, 3, 40, 50)
    padded = torch.zeros(1, 3, 64, 64)
    padded[..., :40, :50] = x
    with torch.no_grad():
        small, full = backbone(x), backbone(padded)
    for s, f in zip(small, full):
        torch.testing.assert_close(s, f[..., :s.shape[-2], :s.shape[-1]])
    with pytest.raises(ValueError, match="img_size"):
        backbone(torch.randn(1, 3, 80, 64))


@pytest.mark.parametrize("family", ["vmamba", "vim"])
def test_frozen_stages(family):
    backbone = _backbone(family, frozen_stages=1)
    frozen = {n for n, p in backbone.model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("patch_embed.", "layers.0.", "pos_embed", "cls_token")) for n in frozen)
    assert any(n.startswith("patch_embed.") for n in frozen) and any(n.startswith("layers.0.") for n in frozen)
    assert all(p.requires_grad for n, p in backbone.model.named_parameters() if n.startswith("layers.1."))
    backbone.train()
    assert not backbone.model.patch_embed.training and not backbone.model.layers[0].training
    assert backbone.model.layers[1].training
    sum(f.sum() for f in backbone(torch.randn(1, 3, 64, 64))).backward()
    assert all(backbone.model.get_parameter(n).grad is None for n in frozen)
    assert backbone.model.layers[1].get_parameter("mixer.in_proj.weight" if family == "vim"
                                                  else "blocks.0.op.in_proj.weight").grad is not None
    assert all(p.requires_grad for p in _backbone(family).parameters())
    with pytest.raises(ValueError, match="frozen_stages"):
        _backbone(family, frozen_stages=5)


@pytest.mark.parametrize("family", ["vmamba", "vim"])
def test_grad_checkpointing_gives_the_same_gradients(family):
    backbone = _backbone(family, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 48)
    grads = []
    for enable in (False, True):
        backbone.zero_grad()
        backbone.set_grad_checkpointing(enable)
        sum(f.square().mean() for f in backbone(x)).backward()
        grads.append({n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, msg=n)


def _assert_loaded(backbone, state, skip=()):
    ours = backbone.model.state_dict()
    for k, v in state.items():
        if k not in skip and k in ours:
            torch.testing.assert_close(ours[k], v, msg=k)


@pytest.mark.parametrize("family", ["vmamba", "pvmamba"])
def test_load_classification_checkpoint(family, tmp_path, capsys):
    source = _classifier(family)
    path = tmp_path / "cls.pth"
    interop.save_state_dict(interop.to_official(source), path, wrap_key="model")
    backbone = _backbone(family)
    outnorm_before = {k: v.clone() for k, v in backbone.model.state_dict().items() if k.startswith("outnorm")}
    notes = backbone.load_pretrained(path)
    assert len(outnorm_before) == 8  # exactly outnorm0..3 .weight/.bias are missing from the checkpoint
    assert any("classifier" in n for n in notes) and any("outnorm0, outnorm1, outnorm2, outnorm3" in n for n in notes)
    _assert_loaded(backbone, source.state_dict())
    for k, v in outnorm_before.items():
        torch.testing.assert_close(backbone.model.state_dict()[k], v)
    assert "note:" in capsys.readouterr().out


def test_load_vim_classification_checkpoint_resamples_pos_embed(tmp_path):
    source = _classifier("vim", img_size=32)
    path = tmp_path / "vim.safetensors"
    interop.save_state_dict(source.state_dict(), path)
    backbone = _backbone("vim")
    notes = backbone.load_pretrained(path)
    assert any("pos_embed resampled" in n for n in notes)
    _assert_loaded(backbone, source.state_dict(), skip=("pos_embed",))


def _official_det_state(family, seed=3):
    """An mmdet-style checkpoint: backbone.<official backbone keys incl. outnorm{i}> + neck/head keys."""
    source = _classifier(family, seed=seed)
    state = {k: v for k, v in interop.to_official(source).items() if not k.startswith("classifier.")}
    g = torch.Generator().manual_seed(seed)
    for i, c in enumerate(_backbone(family).channels):
        state[f"outnorm{i}.weight"] = 1 + torch.rand(c, generator=g)
        state[f"outnorm{i}.bias"] = torch.rand(c, generator=g)
    state = {"backbone." + k: v for k, v in state.items()}
    state["neck.lateral_convs.0.conv.weight"] = torch.randn(256, 16, 1, 1)
    state["rpn_head.rpn_conv.weight"] = torch.randn(256, 256, 3, 3)
    state["roi_head.bbox_head.fc_cls.bias"] = torch.randn(81)
    return state


def test_load_official_detection_checkpoint(tmp_path):
    state = _official_det_state("vmamba")
    path = tmp_path / "det.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 12}}, path)
    backbone = _backbone("vmamba")
    notes = backbone.load_pretrained(path)
    assert any("ignored 3 neck/head tensors" in n for n in notes)
    want = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    assert set(want) == set(backbone.model.state_dict())
    _assert_loaded(backbone, want)


def test_load_dense_vim_checkpoint_with_pyramid(tmp_path):
    trained = _backbone("vim", seed=5)
    state = {"backbone." + k.removeprefix("model."): v for k, v in trained.state_dict().items()}
    state["decode_head.conv_seg.weight"] = torch.randn(150, 32, 1, 1)
    path = tmp_path / "seg.pth"
    torch.save({"state_dict": state}, path)
    backbone = _backbone("vim", seed=6)
    backbone.load_pretrained(path)
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(backbone.state_dict()[k], v, msg=k)


def test_wrong_keys_raise(tmp_path):
    backbone = _backbone("vmamba")
    cases = {}
    state = _official_det_state("vmamba")
    cases["missing outnorm"] = ({k: v for k, v in state.items() if k != "backbone.outnorm1.weight"},
                                "outnorm1.weight")
    cases["unknown module"] = (dict(state, **{"foo.bar": torch.zeros(1)}), "foo.bar")
    cases["extra backbone key"] = (dict(state, **{"backbone.layers.0.blocks.0.extra": torch.zeros(1)}),
                                   "layers.0.blocks.0.extra")
    cls = interop.to_official(_classifier("vmamba"))
    cls["layers.1.downsample.1.weight"] = torch.zeros(3, 3)
    cases["shape mismatch"] = (cls, "layers.1.downsample.1.weight")
    cases["classifier missing a stage"] = ({k: v for k, v in cls.items() if not k.startswith("layers.3.")},
                                           "layers.3.blocks.0")
    for what, (sd, key) in cases.items():
        path = tmp_path / f"{what.replace(' ', '_')}.pth"
        torch.save({"state_dict": sd} if any(k.startswith("backbone.") for k in sd) else sd, path)
        with pytest.raises(WeightsError, match=key.replace(".", r"\.")):
            backbone.load_pretrained(path)
