"""py.eval.export --format=onnx: each family (small configs) exported to ONNX in standard ops only,
checked by onnx.checker and run by onnxruntime against the eager model (native kernels) within 1e-4."""
import pytest
import torch

import py.models as models
from py.eval import export

onnx = pytest.importorskip("onnx")  # in the pinned environment; a VISIONSSM_PYTHON may lack it

SMALL = {
    "vmamba": ("vmamba_tiny_s1l8", dict(img_size=32, dims=16, depths=(1, 1, 2, 1))),
    "vmamba_ssd": ("vmamba_tiny_ssd", dict(img_size=32, dims=16, depths=(1, 1, 1, 1), ssm_d_state=8,
                                           ssd_chunk_size=8)),
    "vim": ("vim_tiny", dict(img_size=32, embed_dim=32, depth=2, patch_size=8)),
    "dyvm": ("dyvm_vim_tiny", dict(img_size=32, embed_dim=32, depth=3, patch_size=8, pruning_loc=(1, 2),
                                   keep_ratio=0.7)),
    "pvmamba": ("pvmamba_tiny", dict(img_size=64, embed_dim=16, depths=(1, 1, 4, 1), num_heads=(2, 2, 2, 2),
                                     d_state=8)),
    "pvmamba_dcnv4": ("pvmamba_tiny", dict(img_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2),
                                           d_state=8, dsa_sampler="dcnv4")),
}
TOL = 1e-4  # max |onnxruntime - eager|, the CLI's default --check_tol


def _model(case):
    name, kwargs = SMALL[case]
    kwargs = dict(kwargs)
    img = kwargs.pop("img_size")
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=10, img_size=img, **kwargs).eval()
    if case == "dyvm":  # layer 0 skips its backward branch, layer 1 its forward one
        with torch.no_grad():
            model.layers[0].mixer.block_head.bias.copy_(torch.tensor([5.0, -5.0]))
            model.layers[1].mixer.block_head.bias.copy_(torch.tensor([-5.0, 5.0]))
    return model


def _nodes(graph):
    """Every node, those of subgraphs (If branches) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)


@pytest.mark.parametrize("case", sorted(SMALL))
def test_onnx_runs_in_onnxruntime_and_matches_eager(case, tmp_path):
    model = _model(case)
    path = tmp_path / f"{case}.onnx"
    export.export_onnx(model, export.example_input(model), path)  # also runs onnx.checker
    assert not list(tmp_path.glob("*.data")), "weights must be inside the .onnx file"
    nodes = list(_nodes(onnx.load(str(path)).graph))
    assert {n.domain for n in nodes} <= {"", "ai.onnx"}, "only standard ONNX ops"
    ops = {n.op_type for n in nodes}
    if case == "pvmamba_dcnv4":
        assert "GridSample" in ops  # DCNv4's decomposition
    if case == "dyvm":  # each layer's two gated SSM branches stay conditional
        assert sum(n.op_type == "If" for n in nodes) == 2 * len(model.layers)
    for seed in (0, 1):  # the example it was traced with and another input
        x = export.example_input(model, seed)
        with torch.no_grad():
            eager = model(x)  # default backends: the native CPU kernels
        got = export._run_onnx(path, x)
        assert got.shape == eager.shape
        assert export.max_abs_diff(got, eager) <= TOL


def test_selective_scan_graph_does_not_grow_per_token(tmp_path):
    """The chunked scan: the node count grows with L / chunk, not with L. A step per token costs ~6
    nodes per scan (12 per token for Vim's two scans); chunks of 8 cost ~1.5 per token."""
    sizes = {}
    for img in (32, 64):
        torch.manual_seed(0)
        model = models.create_model("vim_tiny", num_classes=10, img_size=img, embed_dim=32, depth=1,
                                    patch_size=4).eval()
        path = tmp_path / f"vim{img}.onnx"
        export.export_onnx(model, export.example_input(model), path)
        sizes[img] = len(onnx.load(str(path)).graph.node)
    tokens = {32: 65, 64: 257}  # patches + class token
    per_token = (sizes[64] - sizes[32]) / (tokens[64] - tokens[32])
    assert per_token < 2, f"{sizes}: {per_token:.1f} nodes per extra token"


def test_an_op_without_decomposition_is_an_export_error(monkeypatch):
    from py.ops import decompositions
    monkeypatch.delitem(decompositions.FUNCTIONS, "cross_merge")
    model = _model("vmamba")
    with pytest.raises(export.ExportError, match="visionssm.cross_merge"):
        export.onnx_program(model, export.example_input(model))


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
VIM = ["--model=vim_tiny", "--format=onnx", "--img_size=32", "--num_classes=10",
       '--model_kwargs={"embed_dim": 32, "depth": 2, "patch_size": 8}']


def test_cli_writes_checks_and_compares(tmp_path, capsys):
    out = tmp_path / "vim.onnx"
    assert export.main(["export", *VIM, f"--output={out}"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote onnx program of vim_tiny for input (1, 3, 32, 32) to {out}" in printed
    diff = float(printed.split("max |exported - eager| on a random input: ")[1].split()[0])
    assert 0 <= diff <= TOL
    # a tolerance below the float32 difference of the two implementations fails with exit 1
    assert export.main(["export", *VIM, f"--output={out}", "--check_tol=1e-12"]) == 1
    assert "exported output differs from eager" in capsys.readouterr().err


def test_cli_missing_package_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export, "missing_onnx_packages", lambda: ["onnxruntime"])
    assert export.main(["export", *VIM, f"--output={tmp_path / 'x.onnx'}"]) == 2
    assert "needs the Python package(s) onnxruntime" in capsys.readouterr().err
