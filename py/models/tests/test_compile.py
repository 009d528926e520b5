"""torch.compile(fullgraph=True) on every family: no graph break, the native ops in the graph as
custom ops (torch.ops.visionssm.*), and the compiled model equal to eager, inference and training
(forward + backward). Small configs; the AOTAutograd backend "aot_eager" for the family matrix (it
traces the ops' fake implementations and registered autograd as inductor does, without a C++
compile per graph), inductor itself on one family."""
import pytest
import torch

import py.models as models

# (name, config overrides, image size, the custom ops its graph must hold)
SS = {"visionssm.selective_scan.default"}
CROSS = {"visionssm.cross_scan.default", "visionssm.cross_merge.default"}
FAMILIES = {
    "vmamba": ("vmamba_tiny_s1l8", dict(dims=16, depths=(1, 1, 1, 1)), 32, SS | CROSS),
    "vmamba_ssd": ("vmamba_tiny_ssd", dict(dims=16, depths=(1, 1, 1, 1), ssm_d_state=8, ssd_chunk_size=8), 32,
                   {"visionssm.ssd.default"} | CROSS),
    "vim": ("vim_tiny", dict(embed_dim=32, depth=2, patch_size=8), 32, SS),
    "dyvm": ("dyvm_vim_tiny", dict(embed_dim=32, depth=3, patch_size=8, pruning_loc=(1, 2)), 32, SS),
    "pvmamba": ("pvmamba_tiny", dict(embed_dim=16, depths=(1, 1, 1, 1)), 64, set()),
    "pvmamba_dcnv4": ("pvmamba_tiny", dict(embed_dim=16, depths=(1, 1, 1, 1), dsa_sampler="dcnv4"), 64,
                      {"visionssm.dcnv4.default"}),
}


def _model(family):
    name, kwargs, size, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=7, img_size=size, **kwargs)
    x = torch.randn(2, model.default_cfg["input_size"][0], size, size, generator=torch.Generator().manual_seed(1))
    return model, x


def _custom_ops(graphs):
    """visionssm ops called in the graphs, torch.cond branches (DyVM) included."""
    return {str(n.target) for g in graphs for m in g.modules() if isinstance(m, torch.fx.GraphModule)
            for n in m.graph.nodes if n.op == "call_function" and str(n.target).startswith("visionssm.")}


def _loss(out):
    if isinstance(out, torch.Tensor):
        return out.square().mean()
    return out.logits.square().mean() + out.tokens.square().mean()  # DyVM's training output


def _forward_backward(fn, model, x, seed):
    torch.manual_seed(seed)  # DyVM's training gates are Gumbel samples
    loss = _loss(fn(x))
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    return loss.detach(), grads


def _check(family, backend, train):
    model, x = _model(family)
    model.train(train)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1
    assert _custom_ops(explained.graphs) == FAMILIES[family][3]
    frames = []  # one compiled frame, however often it is called (state the model keeps must not recompile it)
    counted = lambda gm, inputs: (frames.append(gm), torch._dynamo.lookup_backend(backend)(gm, inputs))[1]
    compiled = torch.compile(model, fullgraph=True, backend=counted)
    tol = dict(rtol=1e-5, atol=1e-6)
    if not train:
        with torch.no_grad():
            compiled(x)
            torch.testing.assert_close(compiled(x), model(x), **tol)
        assert len(frames) == 1, f"{len(frames)} compilations for 2 calls"
        return
    loss_c, grads_c = _forward_backward(compiled, model, x, seed=5)
    loss_e, grads_e = _forward_backward(model, model, x, seed=5)
    torch.testing.assert_close(loss_c, loss_e, **tol)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, gc, ge in zip(names, grads_c, grads_e):
        assert (gc is None) == (ge is None), name
        if ge is not None:
            torch.testing.assert_close(gc, ge, **tol, msg=name)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compiled_family_equals_eager(family, train):
    _check(family, "aot_eager", train)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_inductor_vim_equals_eager(train):
    import torch._inductor.config as inductor_config
    with inductor_config.patch(fallback_random=True):  # eager's RNG stream (drop path)
        _check("vim", "inductor", train)


def test_compiled_dyvm_gates_differ_per_image():
    """DyVM inference with images whose branch gates differ: the compiled torch.cond form (branch run
    on the batch, gated-off rows zeroed) equals eager's per-image subsets."""
    model, x = _model("dyvm")
    model.eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for layer in model.layers:
            layer.mixer.block_head.weight.normal_(0.0, 5.0)
            layer.mixer.block_head.bias.zero_()
        want = model(x)
    gates = model.last_block_policy.flatten(1).T  # (B, depth*2)
    assert not torch.equal(gates[0], gates[1]) and gates.min() == 0 and gates.max() == 1, gates
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
