"""Tests for py/models/dyvm.py (spec /work/shared/specs/dyvm.md sections 3, 4 and 9)."""
import pytest
import torch
import torch.nn.functional as F

import py.models.dyvm  # noqa: F401  (registers the models)
import py.models.vim  # noqa: F401
from py.models.dyvm import DynamicBiMamba, DyVMLoss, DyVMOutput, gumbel_sigmoid
from py.models.registry import create_model
from py.models.vim import BiMamba

EXPECTED_PARAMS = {"dyvm_vim_tiny": 7_367_086, "dyvm_vim_small": 26_594_110, "dyvm_vim_base": 100_631_134}
PREDICTOR_PARAMS = {"dyvm_vim_tiny": 60_722, "dyvm_vim_small": 241_250, "dyvm_vim_base": 961_730}


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


def _small(**kw):
    """A cheap DyVM: d 64, depth 4, pruning before layers 1/2/3, 8x8 grid."""
    cfg = dict(num_classes=5, img_size=32, patch_size=4, depth=4, embed_dim=64, pruning_loc=(1, 2, 3),
               keep_ratio=0.7)
    cfg.update(kw)
    return create_model("dyvm_vim_tiny", **cfg)


def _topk_keep(model):
    """Deterministic replacement for the Gumbel sampling: keep the inference top-K among live tokens."""
    def sample_keep(logp, policy, stage):
        score = logp[..., 0].masked_fill(policy[..., 0] < 0.5, float("-inf"))
        idx = score.topk(model.num_keep(stage), dim=1).indices
        return torch.zeros_like(policy).scatter(1, idx[..., None], 1.0) * policy
    return sample_keep


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_param_counts(name):
    with torch.device("meta"):
        model = create_model(name)
    assert _n_params(model) == EXPECTED_PARAMS[name]
    assert _n_params(model.score_predictor[0]) == PREDICTOR_PARAMS[name]
    assert _n_params(model.layers[0].mixer.block_head) == 8 * model.embed_dim + 2


@pytest.fixture(scope="module")
def tiny_pair():
    """dyvm_vim_tiny (ρ 0.7) and a vim_tiny holding the same backbone weights."""
    torch.manual_seed(0)
    dyvm = create_model("dyvm_vim_tiny", keep_ratio=0.7).eval()
    vim = create_model("vim_tiny").eval()
    missing, unexpected = vim.load_state_dict(dyvm.state_dict(), strict=False)
    assert not missing and all("score_predictor" in k or "block_head" in k for k in unexpected)
    return dyvm, vim


def test_forward_finite_and_inference_lengths(tiny_pair):
    dyvm, _ = tiny_pair
    with torch.no_grad():
        tokens, aux = dyvm.forward_features(torch.randn(1, 3, 224, 224), return_aux=True)
        logits = dyvm.forward_head(tokens, cls_pos=aux["cls_pos"])
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    assert aux["seq_lens"] == [197, 138, 97, 68]
    assert aux["cls_positions"] == [98, 68, 48, 33]
    assert tokens.shape == (1, 68, 192)
    pos = aux["current_pos"]
    assert pos.shape == (1, 67) and (pos[:, 1:] > pos[:, :-1]).all()   # spatial order kept
    assert aux["block_policy"].shape == (24, 1, 1, 2) and bool((aux["block_policy"] == 1).all())  # b = 5


def test_keep_all_equals_vim(tiny_pair):
    dyvm, vim = tiny_pair
    x = torch.randn(1, 3, 224, 224)
    dyvm.keep_ratio = 1.0
    try:
        with torch.no_grad():
            out_d, out_v = dyvm(x), vim(x)
    finally:
        dyvm.keep_ratio = 0.7
    assert (out_d - out_v).abs().max() <= 1e-6


def test_keep_all_train_layout_is_identity():
    torch.manual_seed(0)
    model = _small().train()
    model.sample_keep = lambda logp, policy, stage: torch.ones_like(policy)
    out = model(torch.randn(2, 3, 32, 32))
    assert torch.equal(out.current_pos, torch.arange(64).expand(2, -1))
    model.eval()


@pytest.mark.parametrize("img,patch", [(32, 4), (28, 4)])
def test_masked_training_equals_pruned_inference(img, patch):
    torch.manual_seed(0)
    model = _small(img_size=img, patch_size=patch)
    model.reset_block_heads(1e4)            # every gate on, even with Gumbel noise
    model.sample_keep = _topk_keep(model)
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        model.eval()
        ref_tokens, ref = model.forward_features(x, return_aux=True)
        ref_logits = model.forward_head(ref_tokens, cls_pos=ref["cls_pos"])
        model.train()
        out = model(x)
    k = ref_tokens.shape[1] - 1
    assert isinstance(out, DyVMOutput) and out.tokens.shape[1] == model.num_patches
    assert bool((out.token_policy[:, :k] == 1).all()) and bool((out.token_policy[:, k:] == 0).all())
    # the kept patch tokens, in order, match the physically pruned run
    ref_other = torch.cat([ref_tokens[:, :k // 2], ref_tokens[:, k // 2 + 1:]], dim=1)
    torch.testing.assert_close(out.tokens[:, :k], ref_other, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.current_pos[:, :k], ref["current_pos"], rtol=0, atol=0)
    torch.testing.assert_close(out.logits, ref_logits, rtol=0, atol=1e-5)
    pos = out.current_pos
    assert (pos[:, 1:k] > pos[:, :k - 1]).all()            # kept prefix keeps the spatial order
    # the dropped suffix is [dropped at stage 3] ++ [stage 2] ++ [stage 1], each run ascending
    descents = (pos[:, k + 1:] < pos[:, k:-1]).sum(1)
    assert (descents <= len(model.pruning_loc) - 1).all()
    assert torch.equal(pos.sort(1).values, torch.arange(model.num_patches).expand(2, -1))


def test_mixer_rearranged_mask_equivalence_and_negative_control():
    torch.manual_seed(0)
    mixer = BiMamba(16, d_state=4).eval()
    L, keep = 11, torch.tensor([0, 2, 3, 6, 7, 9])
    drop = torch.tensor([i for i in range(L) if i not in keep.tolist()])
    h = torch.randn(1, L, 16)
    with torch.no_grad():
        pruned = mixer(h[:, keep])
        layout = torch.cat([keep, drop])
        mask = torch.cat([torch.ones(len(keep)), torch.zeros(len(drop))]).view(1, L, 1)
        masked = mixer(h[:, layout], mask=mask)[:, :len(keep)]
        inplace_mask = torch.zeros(1, L, 1)
        inplace_mask[:, keep] = 1
        inplace = mixer(h, mask=inplace_mask)[:, keep]
    torch.testing.assert_close(masked, pruned, rtol=0, atol=1e-6)
    assert (inplace - pruned).abs().max() > 1e-3


def test_block_gating_skip_equals_zeroed():
    torch.manual_seed(0)
    mixer = DynamicBiMamba(16, d_state=4).eval()
    torch.nn.init.normal_(mixer.block_head.weight, std=1.0)
    h = torch.randn(6, 9, 16)
    with torch.no_grad():
        out, q = mixer(h, cls_pos=4)
        assert q.shape == (6, 1, 2) and set(q.unique().tolist()) <= {0.0, 1.0}
        assert 0 < q.sum() < q.numel()     # a mixed batch exercises the subset path
        xz = mixer.in_proj(h).transpose(1, 2)
        y_f = mixer.ssm_branch(xz) * q[:, 0, 0, None, None]
        y_b = mixer.ssm_branch(xz.flip(-1), True) * q[:, 0, 1, None, None]
        ref = mixer.combine(y_f, y_b)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    torch.nn.init.zeros_(mixer.block_head.weight)
    torch.nn.init.constant_(mixer.block_head.bias, -5.0)
    with torch.no_grad():
        out, q = mixer(h, cls_pos=4)
    assert bool((q == 0).all()) and bool((out == 0).all())


def test_gumbel_sigmoid_straight_through():
    logits = torch.randn(1000, requires_grad=True)
    gates = gumbel_sigmoid(logits, training=True)
    assert set(gates.unique().tolist()) <= {0.0, 1.0}
    gates.sum().backward()
    assert logits.grad.abs().sum() > 0
    eval_gates = gumbel_sigmoid(logits.detach(), training=False)
    assert torch.equal(eval_gates, (logits.detach() > 0).float())


def test_predictor_pool_ignores_dropped_tokens():
    torch.manual_seed(0)
    pred = _small().score_predictor[0].eval()
    x, policy = torch.randn(2, 10, 64), torch.ones(2, 10, 1)
    policy[:, 7:] = 0
    x2 = x.clone()
    x2[:, 7:] = 100 * torch.randn(2, 3, 64)
    with torch.no_grad():
        a, b = pred(x, policy), pred(x2, policy)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    torch.testing.assert_close(a.exp().sum(-1), torch.ones(2, 10))


def test_loss_terms():
    loss_fn = DyVMLoss(keep_ratio=0.5, block_ratio=0.75, num_stages=2)
    m = 8
    keep1 = torch.tensor([[1.0] * 4 + [0.0] * 4, [0.0] * 4 + [1.0] * 4])
    keep2 = torch.tensor([[1.0] * 2 + [0.0] * 6, [0.0] * 6 + [1.0] * 2])
    assert loss_fn.token_ratio_loss([keep1, keep2]) == 0
    q = torch.ones(4, 2, 1, 2)
    q[0] = 0
    assert loss_fn.block_ratio_loss(q) == 0
    # token distillation is invariant to the rearrangement order
    torch.manual_seed(0)
    teacher = torch.randn(2, m, 16)
    student = torch.randn(2, m, 16)
    policy = (torch.rand(2, m, 1) > 0.5).float()
    pos = torch.arange(m).expand(2, -1)
    perm = torch.stack([torch.randperm(m), torch.randperm(m)])
    base = loss_fn.token_distill_loss(student, policy, pos, teacher)
    permuted = loss_fn.token_distill_loss(student.gather(1, perm[..., None].expand(-1, -1, 16)),
                                          policy.gather(1, perm[..., None]), pos.gather(1, perm), teacher)
    torch.testing.assert_close(base, permuted)


def test_backward_with_loss_sgd_step():
    torch.manual_seed(0)
    model = _small().train()
    teacher = create_model("vim_tiny", num_classes=5, img_size=32, patch_size=4, depth=4, embed_dim=64)
    teacher.load_state_dict(model.state_dict(), strict=False)
    loss_fn = model.build_loss(teacher=teacher)        # what py/training/train.py calls
    assert loss_fn.token_targets == pytest.approx([0.7, 0.49, 0.343])
    x = torch.randn(4, 3, 32, 32)
    y = F.one_hot(torch.tensor([0, 1, 2, 3]), 5).float() * 0.9 + 0.02   # soft (mixup-style) targets
    opt = torch.optim.SGD(model.parameters(), lr=0.2)

    def step_loss():
        torch.manual_seed(123)   # same Gumbel noise before and after the step
        loss, logits = loss_fn(model, x, y)
        assert logits.shape == (4, 5)
        return loss

    loss0 = step_loss()
    assert set(loss_fn.last_terms) == {"cls", "token_ratio", "block_ratio", "kl", "token_distill"}
    assert all(torch.isfinite(v) for v in loss_fn.last_terms.values())
    opt.zero_grad()
    loss0.backward()
    grads = dict(model.named_parameters())
    for name in ("score_predictor.0.out_conv.4.weight", "layers.2.mixer.block_head.bias",
                 "layers.3.mixer.A_b_log", "head.weight"):
        assert grads[name].grad is not None and grads[name].grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())
    opt.step()
    with torch.no_grad():
        loss1 = step_loss()
    assert torch.isfinite(loss1) and abs(loss1.item() - loss0.item()) > 1e-5
    with pytest.raises(TypeError, match="DyVMOutput"):
        loss_fn.loss_from_outputs(x, torch.zeros(4, 5), y)


def test_settable_ratios_and_errors():
    model = _small().eval()
    with torch.no_grad():
        _, aux = model.forward_features(torch.randn(1, 3, 32, 32), return_aux=True)
        assert aux["seq_lens"] == [65, 45, 32, 22]      # int(0.7^s * 64) + 1
        model.keep_ratio = 0.5
        _, aux = model.forward_features(torch.randn(1, 3, 32, 32), return_aux=True)
        assert aux["seq_lens"] == [65, 33, 17, 9]
        model.keep_ratio = 0.0
        with pytest.raises(ValueError, match="keep_ratio"):
            model(torch.randn(1, 3, 32, 32))
    model.dynamic_blocks = False
    model.keep_ratio, model.block_ratio = 0.9, 0.6
    assert DyVMLoss.from_model(model).block_ratio == 0.6
    with pytest.raises(ValueError, match="pruning_loc"):
        _small(pruning_loc=(1, 4))
    with pytest.raises(ValueError, match="patch grid"):
        _small(img_size=30)


def test_load_pretrained_vim_and_report(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    vim = create_model("vim_tiny", num_classes=5, img_size=32, patch_size=4, depth=4, embed_dim=64)
    path = tmp_path / "vim.safetensors"
    save_file({k: v.contiguous() for k, v in vim.state_dict().items()}, str(path))
    model = _small()
    model.layers[0].mixer.block_head.bias.data.fill_(-1.0)
    model.load_pretrained_vim(path)
    assert torch.equal(model.layers[2].mixer.A_b_log, vim.layers[2].mixer.A_b_log)
    assert torch.equal(model.layers[0].mixer.block_head.bias, torch.full((2,), 5.0))
    model.eval()
    with torch.no_grad():
        model(torch.randn(3, 3, 32, 32))
    report = model.keep_ratio_report()
    assert report == {"block_keep_ratio": 1.0, "token_keep_ratio": 21 / 64}
    assert model.keep_ratio_report() == {"token_keep_ratio": 21 / 64}
    with pytest.raises(ValueError, match="missing.*norm_f.weight"):
        model.load_pretrained_vim({k: v for k, v in vim.state_dict().items() if "norm_f" not in k})
