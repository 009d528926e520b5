"""Mask R-CNN on our backbones vs spec dense.md §3 (params, FLOPs), §4 (mmdet overrides), §8.8."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList

import py.models as M
from py.models.dense import mask_rcnn as mr
from py.models.dense.backbone import build_backbone
from py.ops import _native, force_backend

# Without the native CPU kernels (a plain checkout) the models run the PyTorch reference ops.
_NATIVE = all(_native.load(n) is not None for n in ("cross_scan_cpu", "selective_scan_cpu"))


@pytest.fixture(autouse=True)
def _ops_and_threads():
    torch.set_num_threads(1)
    with contextlib.nullcontext() if _NATIVE else force_backend("reference"):
        yield


def _nparams(module):
    return sum(p.numel() for p in module.parameters())


def _tiny(num_classes=3, **options):
    torch.manual_seed(0)
    backbone = build_backbone("vmamba_tiny_s1l8", dims=16, depths=(1, 1, 1, 1), drop_path_rate=0.0)
    opts = dict(fpn_channels=16, representation_size=32, mask_head_channels=16, min_size=64, max_size=64,
                box_batch_size_per_image=64, rpn_batch_size_per_image=64)
    return mr.MaskRCNN(backbone, num_classes, **dict(opts, **options))


def _target(boxes, labels, size=(64, 64)):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    masks = torch.zeros(len(boxes), *size, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        masks[i, y1:y2, x1 + 2:x2 - 2] = 1  # not the whole box: the mask head has something to learn
    return dict(boxes=boxes, labels=torch.tensor(labels, dtype=torch.int64), masks=masks)


# ---------------------------------------------------------------------------------------------
# Params (spec §3.2) and FLOPs (§3.3)
# ---------------------------------------------------------------------------------------------
def test_registered_models():
    assert M.list_models("mask_rcnn_*") == [
        "mask_rcnn_pvmamba_tiny", "mask_rcnn_vim_small", "mask_rcnn_vmamba_base_s2l15", "mask_rcnn_vmamba_mnist",
        "mask_rcnn_vmamba_small_s2l15", "mask_rcnn_vmamba_tiny_s1l8"]
    cfg = M.registry.registered_cfg("mask_rcnn_vmamba_tiny_s1l8")
    assert (cfg["task"], cfg["num_classes"], cfg["input_size"]) == ("detection", 80, (3, 800, 1333))
    with torch.device("meta"):
        vim = M.create_model("mask_rcnn_vim_small")
        mnist = M.create_model("mask_rcnn_vmamba_mnist")
    assert vim.backbone.body.input_size == (1344, 1344)  # 1333 padded to /32, square
    assert (vim.num_classes, vim.task) == (80, "detection")
    assert mnist.num_classes == 10 and mnist.backbone.out_channels == 64
    assert mnist.backbone.body.channels == [32, 64, 128, 256]
    assert mnist.roi_heads.box_head.fc7.out_features == 256
    assert mnist.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert mnist.rpn._post_nms_top_n == dict(training=300, testing=100)
    assert (mnist.transform.min_size, mnist.transform.max_size) == ((128,), 128)


def test_params_exact():
    with torch.device("meta"):
        t = M.create_model("mask_rcnn_vmamba_tiny_s1l8")
        stock = M.create_model("mask_rcnn_vmamba_tiny_s1l8", stock_heads=True)
        s = M.create_model("mask_rcnn_vmamba_small_s2l15")
        b = M.create_model("mask_rcnn_vmamba_base_s2l15")
    heads = t.roi_heads
    assert _nparams(t.backbone.body) == 29_481_408
    assert _nparams(t.backbone.fpn) == 2_729_984
    assert _nparams(t.rpn) == 593_935
    assert _nparams(heads.box_head) + _nparams(heads.box_predictor) == 14_306_705
    assert _nparams(heads.mask_head) + _nparams(heads.mask_predictor) == 2_643_280
    assert _nparams(t) == 49_755_312
    assert _nparams(stock) == 49_759_669
    assert _nparams(s) == 69_654_000
    assert _nparams(b) == 107_931_376


def test_flops_tiny_exact_at_1280x800():
    """The one slow test: VMamba-T Mask R-CNN at 1x3x1280x800 (spec §3.3: 271,163,376,640 exactly)."""
    model = M.create_model("mask_rcnn_vmamba_tiny_s1l8")
    result = M.count_flops(model.flop_count_module(), (3, 1280, 800))
    assert result["params"] == 49_755_312
    by_op = result["by_op"]
    assert by_op["linear"] == 14_304_256_000  # box head on exactly 1000 RoIs (reg 320 wide, not 324)
    assert by_op["upsample_nearest2d"] == 21_504_000
    assert result["total"] == 271_163_376_640


# ---------------------------------------------------------------------------------------------
# RoIAlign levels and sampling (§1.3, §8.8)
# ---------------------------------------------------------------------------------------------
def test_roi_levels():
    boxes = torch.tensor([[0, 0, 112, 112], [0, 0, 111, 111], [10, 10, 234, 234], [0, 0, 447, 447],
                          [0, 0, 448, 448], [0, 0, 2000, 2000], [0, 0, 2, 2]], dtype=torch.float32)
    assert mr.roi_levels(boxes).tolist() == [1, 0, 2, 2, 3, 3, 0]


def test_pooler_uses_mmdet_level_and_aligned_sampling():
    pooler = mr.AlignedMultiScaleRoIAlign(mr.FPN_LEVELS, 7)
    # each level's map holds its own index: the pooled value says which level a box was pooled from
    feats = {name: torch.full((1, 2, 512 // s, 512 // s), float(i)) for i, (name, s) in
             enumerate(zip(mr.FPN_LEVELS, (4, 8, 16, 32)))}
    boxes = torch.tensor([[0, 0, 112, 112], [0, 0, 111, 111], [0, 0, 250, 250], [0, 0, 500, 500]],
                         dtype=torch.float32)
    out = pooler(feats, [boxes], [(512, 512)])
    assert out.shape == (4, 2, 7, 7)
    assert out[:, 0, 3, 3].tolist() == [1.0, 0.0, 2.0, 3.0]
    # aligned=True on a ramp (value = x): the 7 bin centres of box [8, 8, 36, 36] (level 0, stride 4)
    # are at x = 10 + 4j image px, i.e. (10 + 4j) / 4 - 0.5 = 2 + j feature px (aligned=False: 2.5 + j)
    ramp = torch.arange(64, dtype=torch.float32).expand(64, 64)[None, None]
    feats = {"0": ramp, "1": ramp[..., ::2, ::2], "2": ramp[..., ::4, ::4], "3": ramp[..., ::8, ::8]}
    out = pooler(feats, [torch.tensor([[8.0, 8.0, 36.0, 36.0]])], [(256, 256)])
    torch.testing.assert_close(out[0, 0, 0], torch.arange(7, dtype=torch.float32) + 2.0)


# ---------------------------------------------------------------------------------------------
# Losses: L1 (RPN and R-CNN), aligned binarised mask targets
# ---------------------------------------------------------------------------------------------
def test_rpn_loss_is_l1_over_sampled_anchors():
    model = _tiny()
    rpn = model.rpn
    assert isinstance(rpn, mr.L1RegionProposalNetwork)
    labels = [torch.tensor([1.0, 0.0, -1.0, 1.0, 0.0, 0.0])]  # 2 pos, 3 neg (all sampled: batch 64), 1 ignored
    objectness = torch.tensor([0.3, -1.0, 2.0, 0.1, 0.5, -0.2])
    deltas = torch.tensor([[0.05, -0.02, 0.0, 0.01], [9.0, 9.0, 9.0, 9.0], [5.0, 5.0, 5.0, 5.0],
                           [-0.03, 0.04, 0.02, 0.0], [1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    targets = [torch.zeros(6, 4)]
    obj_loss, box_loss = rpn.compute_loss(objectness, deltas, labels, targets)
    hand_box = (0.05 + 0.02 + 0.01 + 0.03 + 0.04 + 0.02) / 5  # |d| of the positives / 5 sampled
    keep = [0, 1, 3, 4, 5]
    hand_obj = F.binary_cross_entropy_with_logits(objectness[keep], labels[0][keep])
    torch.testing.assert_close(box_loss, torch.tensor(hand_box))
    torch.testing.assert_close(obj_loss, hand_obj)


def test_rcnn_box_loss_is_l1_on_the_gt_class():
    num_classes = 3
    class_logits = torch.tensor([[0.1, 2.0, -1.0, 0.3], [1.0, 0.0, 0.5, -0.5], [0.2, 0.2, 0.2, 0.9]])
    reg = torch.zeros(3, num_classes * 4)
    reg[0, 0:4] = torch.tensor([0.05, -0.05, 0.02, 0.0])  # class 1 of RoI 0
    reg[0, 4:8] = 7.0  # class 2 of RoI 0: not its label, ignored
    reg[2, 8:12] = torch.tensor([0.01, 0.0, -0.04, 0.03])  # class 3 of RoI 2
    reg = F.pad(reg, (4, 0))  # the zero background column, as BoxPredictor returns it
    labels = [torch.tensor([1, 0]), torch.tensor([3])]
    targets = [torch.zeros(2, 4), torch.tensor([[0.0, 0.0, 0.0, 0.06]])]
    cls_loss, box_loss = mr.fastrcnn_l1_loss(class_logits, reg, labels, targets)
    hand = (0.05 + 0.05 + 0.02 + 0.01 + 0.04 + 0.03) / 3  # over the 3 sampled RoIs
    torch.testing.assert_close(box_loss, torch.tensor(hand))
    torch.testing.assert_close(cls_loss, F.cross_entropy(class_logits, torch.tensor([1, 0, 3])))


def test_box_and_mask_predictors_have_no_background_outputs():
    box, mask = mr.BoxPredictor(8, 3), mr.MaskPredictor(4, 4, 3)
    assert box.bbox_pred.out_features == 12 and box.cls_score.out_features == 4
    scores, deltas = box(torch.randn(5, 8))
    assert scores.shape == (5, 4) and deltas.shape == (5, 16) and not deltas[:, :4].any()
    logits = mask(torch.randn(2, 4, 14, 14))
    assert logits.shape == (2, 4, 28, 28) and not logits[:, 0].any()


def test_mask_targets_aligned_and_binarised():
    gt = torch.zeros(1, 16, 16, dtype=torch.uint8)
    gt[0, :, :4] = 1  # the left 4 pixel columns
    proposal = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    logits = torch.randn(1, 3, 28, 28)
    loss = mr.aligned_mask_loss(logits, [proposal], [gt], [torch.tensor([2])], [torch.tensor([0])])
    # aligned sampling at x = (j + 0.5) * 8/28 - 0.5 on pixel centres: >= 0.5 up to x = 3.5, i.e. j <= 13
    target = torch.zeros(28, 28)
    target[:, :14] = 1
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits[0, 2], target))
    no_rois = torch.tensor([], dtype=torch.long)
    empty = mr.aligned_mask_loss(logits[:0], [proposal[:0]], [gt], [torch.tensor([2])], [no_rois])
    assert empty.item() == 0.0


# ---------------------------------------------------------------------------------------------
# Proposals (§1.4, §8.8)
# ---------------------------------------------------------------------------------------------
def test_at_most_1000_proposals_per_image_train_and_test():
    model = _tiny(fpn_channels=8)
    rpn = model.rpn
    torch.manual_seed(1)
    # 256x256: 3 * (64² + 32² + 16² + 8² + 4²) = 16,368 anchors, most of them survive NMS 0.7
    feats = {name: torch.randn(1, 8, 256 // s, 256 // s) for name, s in
             zip(mr.FPN_LEVELS + ("pool",), (4, 8, 16, 32, 64))}
    images = ImageList(torch.zeros(1, 3, 256, 256), [(256, 256)])
    targets = [dict(boxes=torch.tensor([[10.0, 10.0, 100.0, 120.0]]))]
    with torch.no_grad():
        for training in (True, False):
            rpn.train(training)
            boxes, _ = rpn(images, feats, targets if training else None)
            assert len(boxes[0]) == 1000
        rpn._post_nms_top_n = dict(training=5000, testing=5000)  # the cap is what limits them
        boxes, _ = rpn(images, feats)
        assert len(boxes[0]) > 1000


# ---------------------------------------------------------------------------------------------
# End to end on a tiny model
# ---------------------------------------------------------------------------------------------
def test_tiny_training_loss_falls_and_eval_is_well_formed():
    model = _tiny()
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [_target([[4, 4, 30, 30], [34, 10, 60, 40]], [1, 3]), _target([[10, 20, 50, 60]], [2])]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    totals = []
    for _ in range(12):
        losses = model(images, targets)
        assert sorted(losses) == ["loss_box_reg", "loss_classifier", "loss_mask", "loss_objectness",
                                  "loss_rpn_box_reg"]
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(loss.item())
    assert sum(totals[-3:]) / 3 < 0.8 * sum(totals[:3]) / 3, totals

    model.eval()
    model.roi_heads.score_thresh = 0.0  # keep every detection: the format is what is checked here
    with torch.no_grad():
        outputs = model([images[0], images[1][:, :48, :56]])
    for out, (h, w) in zip(outputs, [(64, 64), (48, 56)]):
        n = len(out["boxes"])
        assert 0 < n <= 100
        assert out["boxes"].shape == (n, 4) and out["scores"].shape == (n,) and out["labels"].shape == (n,)
        assert (out["boxes"][:, 0::2] >= 0).all() and (out["boxes"][:, 0::2] <= w).all()
        assert (out["boxes"][:, 1::2] >= 0).all() and (out["boxes"][:, 1::2] <= h).all()
        assert (out["scores"][:-1] >= out["scores"][1:]).all()
        assert out["labels"].min() >= 1 and out["labels"].max() <= 3
        assert out["masks"].shape == (n, 1, h, w)
        assert set(out["masks"].unique().tolist()) <= {0.0, 1.0}  # binarised at 0.5 after pasting


# The other families as backbones (VMamba above): a few steps learn, eval output well-formed.
FAMILIES = {
    "pvmamba": ("pvmamba_tiny", dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))),
    "vim": ("vim_tiny", dict(embed_dim=32, depth=4, img_size=64)),
    "dyvm": ("dyvm_vim_tiny", dict(embed_dim=32, depth=4, img_size=64, pruning_loc=(1, 3))),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_a_few_steps(family):
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    backbone = build_backbone(name, drop_path_rate=0.0, **kwargs)
    model = mr.MaskRCNN(backbone, 3, fpn_channels=16, representation_size=32, mask_head_channels=16, min_size=64,
                        max_size=64, box_batch_size_per_image=64, rpn_batch_size_per_image=64)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [_target([[4, 4, 30, 30], [34, 10, 60, 40]], [1, 3]), _target([[10, 20, 50, 60]], [2])]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    totals = []
    for _ in range(10):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(loss.item())
    assert sum(totals[-3:]) / 3 < 0.85 * sum(totals[:3]) / 3, totals
    model.eval()
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        out = model([images[0][:, :48, :60]])[0]
    n = len(out["boxes"])
    assert 0 < n <= 100 and out["masks"].shape == (n, 1, 48, 60)


def test_targets_are_validated():
    model = _tiny().train()
    image = torch.rand(3, 64, 64)
    bad_label = _target([[4, 4, 30, 30]], [4])  # K = 3
    with pytest.raises(ValueError, match="labels.*1..3"):
        model([image], [bad_label])
    bad_masks = dict(_target([[4, 4, 30, 30]], [1]), masks=torch.zeros(1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="masks"):
        model([image], [bad_masks])
    with pytest.raises(ValueError, match="num_classes"):
        mr.MaskRCNN(model.backbone.body, 0)


def test_skip_resize_in_training_only():
    image, target = torch.rand(3, 40, 56), _target([[4, 4, 30, 30]], [1], size=(40, 56))
    for skip, train_size in ((False, (45, 64)), (True, (40, 56))):
        transform = _tiny(skip_resize_in_training=skip).transform
        batch, targets = transform.train()([image], [dict(target)])
        assert tuple(batch.image_sizes[0]) == train_size and targets[0]["masks"].shape[-2:] == train_size
        batch, _ = transform.eval()([image])
        assert tuple(batch.image_sizes[0]) == (45, 64)  # eval always resizes (min_size = max_size = 64)


def test_pretrained_backbone_override(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(3)
    cls = M.create_model("vmamba_tiny_s1l8", num_classes=10, dims=32, depths=(1, 1, 2, 1))
    path = tmp_path / "classifier.safetensors"
    save_file({k: v.contiguous() for k, v in cls.state_dict().items()}, str(path))
    det = M.create_model("mask_rcnn_vmamba_mnist", pretrained_backbone=str(path))
    ours, theirs = det.backbone.body.model.state_dict(), cls.state_dict()
    for key in ("patch_embed.0.weight", "layers.2.blocks.1.op.A_logs", "layers.3.blocks.0.norm.weight"):
        torch.testing.assert_close(ours[key], theirs[key])
