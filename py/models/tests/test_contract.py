"""The model contract (py/models/features.py) on every family: timm's forward_intermediates,
prune_intermediate_layers, FeatureInfo, features_only, grad checkpointing, drop_rate."""
import copy

import pytest
import timm
import torch

import py.models as models
from py.models.dyvm import split_cls

# Small configs of each family: (name, kwargs, number of taps, two input sizes)
FAMILIES = {
    "vmamba": ("vmamba_tiny_s1l8", dict(dims=16, depths=(1, 1, 2, 1), num_classes=7), 4, (64, (96, 64))),
    "vmamba_ssd": ("vmamba_tiny_ssd", dict(dims=16, depths=(1, 1, 1, 1), num_classes=7, ssm_d_state=8), 4,
                   (64, (32, 96))),
    "vim": ("vim_tiny", dict(embed_dim=32, depth=4, patch_size=8, num_classes=7), 4, (32, (48, 32))),
    "dyvm": ("dyvm_vim_tiny", dict(embed_dim=32, depth=4, patch_size=8, num_classes=7, pruning_loc=(1, 3)), 4,
             (32, (48, 32))),
    "pvmamba": ("pvmamba_tiny", dict(embed_dim=16, depths=(1, 1, 2, 1), num_classes=7), 4, (64, (96, 64))),
}
HIERARCHICAL = ("vmamba", "vmamba_ssd", "pvmamba")


def _build(family, img_size, seed=0, **extra):
    name, kwargs, _, _ = FAMILIES[family]
    torch.manual_seed(seed)
    return models.create_model(name, img_size=img_size, **{**kwargs, **extra}).eval()


def _input(model, size, batch=2, seed=1):
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, model.default_cfg["input_size"][0], h, w, generator=torch.Generator().manual_seed(seed))


def _close(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_intermediates_agree_with_forward_features(family):
    _, _, taps, sizes = FAMILIES[family]
    for size in sizes:
        model = _build(family, size)
        x = _input(model, size)
        with torch.no_grad():
            feats = model.forward_features(x)
            final, inters = model.forward_intermediates(x)
            normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0]
        _close(final, feats)
        assert len(inters) == taps and len(model.feature_info) == taps
        h, w = x.shape[-2:]
        for t, c, r in zip(inters, model.feature_info.channels(), model.feature_info.reduction()):
            assert t.shape == (2, c, -(-h // r), -(-w // r)) or t.shape == (2, c, h // r, w // r), (t.shape, c, r)
        if family in ("vmamba", "vmamba_ssd"):
            _close(inters[-1], feats)                         # forward_features: last stage, before its norm
            _close(normed, model.classifier.norm(feats))
        elif family == "pvmamba":
            _close(normed.permute(0, 2, 3, 1), feats)         # forward_features: normed, NHWC
        elif family == "vim":
            _, other = split_cls(feats, model.cls_pos)       # normed tokens, class token removed
            _close(normed, other.transpose(1, 2).reshape(normed.shape))
        else:  # dyvm: live tokens scattered back to their positions equal forward_features' tokens
            tokens, st = model.forward_features(x, return_aux=True)
            _, other = split_cls(tokens, st["cls_pos"])
            flat = normed.flatten(2).transpose(1, 2)
            _close(flat.gather(1, st["current_pos"][..., None].expand(-1, -1, flat.shape[-1])), other)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_indices_formats_stop_early_and_errors(family):
    _, _, taps, (size, _) = FAMILIES[family]
    model = _build(family, size)
    x = _input(model, size)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
        for indices, want in ((2, [taps - 2, taps - 1]), ([0, -1], [0, taps - 1]), ((1,), [1])):
            got = model.forward_intermediates(x, indices=indices, stop_early=True, intermediates_only=True)
            assert len(got) == len(want)
            for g, i in zip(got, want):
                _close(g, full[i])
        other = "NLC" if family in ("vim", "dyvm") else "NHWC"
        alt = model.forward_intermediates(x, indices=[0], output_fmt=other, intermediates_only=True)[0]
        want = full[0].flatten(2).transpose(1, 2) if other == "NLC" else full[0].permute(0, 2, 3, 1)
        _close(alt, want)
    for bad in (taps, -taps - 1, 0, taps + 1):
        with pytest.raises(ValueError, match="out of range"):
            model.forward_intermediates(x, indices=[bad] if bad in (taps, -taps - 1) else bad)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NWHC")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prune_keeps_the_requested_intermediates(family):
    _, _, taps, (size, _) = FAMILIES[family]
    model = _build(family, size)
    x = _input(model, size)
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        pruned = copy.deepcopy(model)
        assert pruned.prune_intermediate_layers([0, 1], prune_norm=True) == [0, 1]
        assert len(pruned.layers) == 2
        got = pruned.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    for g, w in zip(got, want):
        _close(g, w)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("through_timm", [False, True])
def test_features_only_is_built_from_the_intermediates(family, through_timm):
    name, kwargs, taps, (size, _) = FAMILIES[family]
    create = timm.create_model if through_timm else models.create_model
    torch.manual_seed(0)
    backbone = create(name, features_only=True, out_indices=(1, -1), img_size=size,
                      **{k: v for k, v in kwargs.items() if k != "num_classes"}).eval()
    assert backbone.out_indices == (1, taps - 1) and backbone.feature_info.out_indices == (1, taps - 1)
    x = _input(backbone, size)
    with torch.no_grad():
        feats = backbone(x)
        inters = backbone.forward_intermediates(x, indices=(1, taps - 1), intermediates_only=True)
    assert [f.shape[1] for f in feats] == backbone.feature_info.channels()
    for i, f, t in zip(backbone.out_indices, feats, inters):
        if family in HIERARCHICAL:  # the family's per-tap norm, as in its official backbone
            norm = getattr(backbone, f"outnorm{i}")
            t = norm(t) if family != "pvmamba" else norm(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        _close(f, t)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_grad_checkpointing_gives_the_same_gradients(family):
    _, _, _, (size, _) = FAMILIES[family]
    grads = []
    for enable in (False, True):
        model = _build(family, size).train()
        if family == "dyvm":
            model.sample_keep = lambda logp, policy, stage: (logp[..., :1] > logp[..., 1:]).float() * policy
        model.set_grad_checkpointing(enable)
        x = _input(model, size)
        torch.manual_seed(3)  # the same dropout/Gumbel draws in both runs
        out = model(x)
        (out.logits if family == "dyvm" else out).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_drop_rate_is_accepted_and_inactive_in_eval(family):
    _, _, _, (size, _) = FAMILIES[family]
    model, dropped = _build(family, size), _build(family, size, drop_rate=0.5)
    x = _input(model, size)
    with torch.no_grad():
        _close(dropped(x), model(x))


def test_dyvm_without_pruning_has_vims_intermediates():
    """keep_ratio 1 and all gates on (fresh block heads): DyVM's dense maps are Vim's on the same weights."""
    _, kwargs, _, (size, _) = FAMILIES["dyvm"]
    dyvm = _build("dyvm", size, keep_ratio=1.0)
    vim = models.create_model("vim_tiny", img_size=size, **{k: v for k, v in kwargs.items() if k != "pruning_loc"})
    vim.load_state_dict({k: v for k, v in dyvm.state_dict().items() if k in vim.state_dict()})
    x = _input(vim, size)
    with torch.no_grad():
        for a, b in zip(dyvm.eval().forward_intermediates(x, intermediates_only=True),
                        vim.eval().forward_intermediates(x, intermediates_only=True)):
            _close(a, b)


def test_dyvm_pruned_tokens_keep_their_value_at_pruning():
    _, _, _, (size, _) = FAMILIES["dyvm"]
    model = _build("dyvm", size)  # pruning before layers 1 and 3
    x = _input(model, size)
    with torch.no_grad():
        taps = [t.flatten(2).transpose(1, 2) for t in model.forward_intermediates(x, intermediates_only=True)]
        alive = [st["current_pos"].clone() for _, _, _, st in model._run_layers(x, model.layers)]
    m = taps[0].shape[1]
    live = [torch.zeros(2, m, dtype=torch.bool).scatter_(1, pos, True) for pos in alive]
    assert live[0].all() and 0 < int(live[3].sum()) < int(live[1].sum()) < 2 * m
    pruned_first, pruned_second = ~live[1], live[1] & ~live[3]
    assert (taps[3] == taps[0]).all(-1)[pruned_first].all()   # frozen at their layer-0 value
    assert (taps[3] == taps[2]).all(-1)[pruned_second].all()  # frozen at their layer-2 value
    assert not (taps[3] == taps[2]).all(-1)[live[3]].any()    # live tokens moved on
