"""UperNet (py/models/dense/upernet.py): exact parameter counts and FLOPs (spec dense.md §3.2, §3.3),
output shapes (§8.3), the mmseg loss normalisation (§2.4, §8.7) and short training runs on each family.

The FLOP count of the real UperNet-T at 512x2048 runs a full forward (~1 min on one thread); its test
has "slow" in its name: deselect it with `-k "not slow"`."""
import pytest
import torch
import torch.nn.functional as F

import py.models as models
from py.models.dense.backbone import DenseBackbone
from py.models.dense.upernet import UperNet, ohem_weights, segmentation_loss

torch.set_num_threads(1)


def _params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name, total, backbone, decode, aux", [
    ("upernet_vmamba_tiny_s1l8", 61_902_572, 29_481_408, 31_497_366, 923_798),
    ("upernet_vmamba_small_s2l15", 81_801_260, 49_380_096, 31_497_366, 923_798),
    ("upernet_vmamba_base_s2l15", 122_069_292, 87_534_592, 33_315_990, 1_218_710),
])
def test_param_counts_match_spec(name, total, backbone, decode, aux):
    model = models.create_model(name)
    assert (_params(model), _params(model.backbone), _params(model.decode_head),
            _params(model.auxiliary_head)) == (total, backbone, decode, aux)
    assert _params(model.flop_count_module()) == total - aux  # the FLOP protocol leaves the aux head out


def test_upperhead_parts_match_spec():
    head = models.create_model("upernet_vmamba_tiny_s1l8").decode_head
    parts = dict(psp=head.psp_modules, bottleneck=head.bottleneck, laterals=head.lateral_convs,
                 fpn=head.fpn_convs, fuse=head.fpn_bottleneck, cls=head.conv_seg)
    assert {k: _params(v) for k, v in parts.items()} == dict(
        psp=1_576_960, bottleneck=12_977_152, laterals=347_136, fpn=7_080_960, fuse=9_438_208, cls=76_950)


def test_vim_small_upernet_param_count():
    # Spec §6.1 has no exact Vim-S number (paper: 46M). Ours: backbone 25,729,536 (pos_embed for a 32x32
    # grid, class token kept, no classifier) + simple pyramid 1,771,392 + UPerHead-384 + aux.
    model = models.create_model("upernet_vim_small")
    assert model.backbone.channels == [384] * 4 and model.backbone.strides == [4, 8, 16, 32]
    assert (_params(model.backbone), _params(model.decode_head), _params(model.auxiliary_head)) == (
        27_500_928, 17_024_406, 923_798)


def test_flops_tiny_512x2048_exact_slow():
    model = models.create_model("upernet_vmamba_tiny_s1l8")
    flops = models.count_flops(model.flop_count_module(), input_size=(3, 512, 2048))
    assert flops["total"] == 948_780_189_696


def test_shapes_at_512():
    # Map sizes depend on the stem, downsamples and head structure only: VMamba-T's dims with one block
    # per stage and narrow heads keep this cheap.
    model = models.create_model("upernet_vmamba_tiny_s1l8", backbone_kwargs=dict(depths=(1, 1, 1, 1)),
                                channels=32, aux_channels=16)
    assert model.task == "segmentation" and model.num_classes == 150
    assert model.default_cfg["input_size"] == (3, 512, 512) and model.default_cfg["task"] == "segmentation"
    x = torch.randn(2, 3, 512, 512)  # training needs 2 images: the PPM's 1x1 pooled map feeds a BatchNorm
    with torch.no_grad():
        assert model.eval()(x[:1]).shape == (1, 150, 128, 128)
        out = model.train()(x)
    assert out["decode"].shape == (2, 150, 128, 128) and out["aux"].shape == (2, 150, 32, 32)


def test_loss_divides_by_all_pixels():
    g = torch.Generator().manual_seed(0)
    decode, aux = torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 5, 2, 2, generator=g)
    labels = torch.randint(0, 5, (2, 16, 16), generator=g)
    ignored = torch.randperm(labels.numel(), generator=g)[:labels.numel() // 2]
    labels.view(-1)[ignored] = 255

    def by_hand(logits):
        up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
        logp = up.log_softmax(1)
        valid = labels != 255
        picked = logp.gather(1, labels.clamp(max=4)[:, None])[:, 0]
        return -(picked * valid).sum() / labels.numel(), up

    want_decode, up = by_hand(decode)
    want_aux, _ = by_hand(aux)
    loss, parts = segmentation_loss(dict(decode=decode, aux=aux), labels)
    torch.testing.assert_close(parts["decode"], want_decode)
    torch.testing.assert_close(parts["aux"], want_aux)
    torch.testing.assert_close(loss, want_decode + 0.4 * want_aux)
    # 50% ignored: half of torch's ignore-aware mean (spec §8.7)
    torch.testing.assert_close(parts["decode"], 0.5 * F.cross_entropy(up, labels, ignore_index=255))
    only_decode, _ = segmentation_loss(decode, labels)
    torch.testing.assert_close(only_decode, want_decode)
    with pytest.raises(ValueError, match="labels"):
        segmentation_loss(decode, labels.float())


def test_ohem_keeps_the_hard_pixels():
    # 1 image, 1x4 pixels, 2 classes; label probabilities by hand: 0.9, 0.6, 0.2, ignored
    p = torch.tensor([0.9, 0.6, 0.2, 0.5])
    logits = torch.stack([torch.zeros(4), torch.log((1 - p) / p)])[None, :, None, :]  # softmax[0] = p
    labels = torch.tensor([[[0, 0, 0, 255]]])
    # thresh 0.7 keeps p < 0.7: pixels 1 and 2. As mmseg, the bar is at least the sorted probabilities'
    # element min(min_kept * B, n - 1) (0-based): min_kept 1 -> 0.6, min_kept 3 -> the last one (0.9), strict <
    torch.testing.assert_close(ohem_weights(logits, labels, 0.7, 1), torch.tensor([[[0.0, 1, 1, 0]]]))
    torch.testing.assert_close(ohem_weights(logits, labels, 0.7, 3), torch.tensor([[[0.0, 1, 1, 0]]]))
    torch.testing.assert_close(ohem_weights(logits, labels, 0.95, 1), torch.tensor([[[1.0, 1, 1, 0]]]))
    torch.testing.assert_close(ohem_weights(logits, labels.fill_(255), 0.7, 1), torch.zeros(1, 1, 4))
    labels = torch.tensor([[[0, 0, 0, 255]]])
    # min_kept counts per image: with 2 images and min_kept 1 the bar is element 2 of [.2 .2 .6 .6 .9 .9]
    torch.testing.assert_close(ohem_weights(logits.expand(2, -1, -1, -1), labels.expand(2, -1, -1), 0.0, 1),
                               torch.tensor([[[0.0, 0, 1, 0]], [[0.0, 0, 1, 0]]]))
    torch.testing.assert_close(ohem_weights(logits, labels, 0.0, 1), torch.tensor([[[0.0, 0, 1, 0]]]))
    loss, parts = segmentation_loss(logits, labels, ohem=dict(thresh=0.7, min_kept=1))
    torch.testing.assert_close(loss, -(torch.log(p[1]) + torch.log(p[2])) / 4)
    # the aux head has no sampler (as in mmseg's configs)
    _, parts = segmentation_loss(dict(decode=logits, aux=logits), labels, ohem=dict(thresh=0.7, min_kept=1))
    torch.testing.assert_close(parts["aux"], -torch.log(p[:3]).sum() / 4)
    for bad in (dict(thresh=0.7), dict(thresh=1.5, min_kept=1), dict(thresh=0.7, min_kept=0),
                dict(thresh=0.7, min_kept=2.5), dict(thresh="0.7", min_kept=1), dict(thresh=True, min_kept=1), [0.7, 1]):
        with pytest.raises(ValueError, match="ohem"):
            segmentation_loss(logits, labels, ohem=bad)
        with pytest.raises(ValueError, match="ohem"):  # refused when the model is built, not at the first step
            models.create_model("upernet_vmamba_mnist", channels=16, aux_channels=0, ohem=bad)
    model = models.create_model("upernet_vmamba_mnist", channels=16, aux_channels=0)
    assert model.ohem == dict(thresh=0.7, min_kept=375)  # the canvases' default (see its docstring)
    with pytest.raises(ValueError, match="at least 2 images per batch"):  # BatchNorm, not a torch traceback
        model.train()(torch.zeros(1, 3, 64, 64))
    assert models.create_model("upernet_vmamba_mnist", channels=16, aux_channels=0, ohem=None).ohem is None


def test_builder_overrides():
    model = models.create_model("upernet_vmamba_mnist", channels=32, aux_channels=0, drop_path_rate=0.0)
    assert model.num_classes == 11 and model.auxiliary_head is None
    assert model.decode_head.conv_seg.in_channels == 32
    assert model.default_cfg["input_size"] == (3, 128, 128)
    out = model.train()(torch.randn(2, 3, 128, 128))
    assert set(out) == {"decode"} and out["decode"].shape == (2, 11, 64, 64)  # stride 2 (a stride-2 stem)
    assert model.backbone.strides == [2, 4, 8, 16]
    bias = model.decode_head.conv_seg.bias.exp()  # the class prior: background 93.5%, digits alike
    torch.testing.assert_close(bias, torch.tensor([0.935] + [0.0065] * 10))
    bias = models.create_model("upernet_vmamba_mnist", num_classes=3, channels=8).decode_head.conv_seg.bias.exp()
    torch.testing.assert_close(bias, torch.tensor([0.935, 0.0325, 0.0325]))
    stride4 = models.create_model("upernet_vmamba_mnist", channels=8, backbone_kwargs=dict(patch_size=4))
    assert stride4.backbone.strides == [4, 8, 16, 32] and stride4.backbone.channels == [32, 64, 128, 256]
    with pytest.raises(ValueError, match="unknown UperNet overrides"):
        models.create_model("upernet_vmamba_mnist", chanels=32)


TINY = {
    "vmamba": ("vmamba_tiny_s1l8", dict(dims=16, depths=(1, 1, 1, 1))),
    "pvmamba": ("pvmamba_tiny", dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))),
    "vim": ("vim_tiny", dict(embed_dim=32, depth=4, img_size=64)),
    "dyvm": ("dyvm_vim_tiny", dict(embed_dim=32, depth=4, img_size=64, pruning_loc=(1, 3))),
}


@pytest.mark.parametrize("family", sorted(TINY))
def test_training_reduces_the_loss(family):
    name, kwargs = TINY[family]
    torch.manual_seed(0)
    model = UperNet(DenseBackbone(name, drop_path_rate=0.0, **kwargs), num_classes=3, channels=16,
                    aux_channels=8, dropout=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, :32] = 1
    labels[:, :, 40:] = 2
    labels[1, :8] = 255
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(15):
        loss, _ = segmentation_loss(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses


def test_class_prior_sets_the_classifier_biases():
    prior = (0.9, 0.06, 0.04)
    model = UperNet(DenseBackbone(TINY["vmamba"][0], drop_path_rate=0.0, **TINY["vmamba"][1]), num_classes=3,
                    channels=16, aux_channels=8, class_prior=prior).eval()
    for head in (model.decode_head, model.auxiliary_head):
        torch.testing.assert_close(head.conv_seg.bias, torch.tensor(prior).log())
    # weights ~N(0, 0.01): the untrained model's mean class probabilities are the prior's
    mean = model(torch.randn(2, 3, 64, 64)).softmax(1).mean((0, 2, 3))
    torch.testing.assert_close(mean, torch.tensor(prior), atol=0.02, rtol=0)
    plain = UperNet(DenseBackbone(TINY["vmamba"][0], **TINY["vmamba"][1]), num_classes=3, channels=16)
    assert (plain.decode_head.conv_seg.bias == 0).all()  # mmseg's init unless asked
    for bad in ((0.5, 0.5), (0.9, 0.2, 0.1), (0.9, 0.1, 0.0), "abc", 3):
        with pytest.raises(ValueError, match="class_prior must be None or 3 pixel frequencies"):
            UperNet(DenseBackbone(TINY["vmamba"][0], **TINY["vmamba"][1]), num_classes=3, channels=16,
                    class_prior=bad)
