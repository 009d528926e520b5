"""py.eval.export (torch.export / ONNX) and the py.eval.convert CLI, on small configs of each family."""
import importlib
import os
import subprocess
import sys

import pytest
import torch

import py.models as models
from py.eval import convert, export
from py.eval.tests.cli import ROOT
from py.models import interop

SMALL = {
    "vmamba": ("vmamba_tiny_s1l8", dict(img_size=32, dims=16, depths=(1, 1, 2, 1))),
    "vmamba_ssd": ("vmamba_tiny_ssd", dict(img_size=32, dims=16, depths=(1, 1, 1, 1), ssm_d_state=8,
                                           ssd_chunk_size=8)),
    "vim": ("vim_tiny", dict(img_size=32, embed_dim=32, depth=2, patch_size=8)),
    "dyvm": ("dyvm_vim_tiny", dict(img_size=32, embed_dim=32, depth=3, patch_size=8, pruning_loc=(1, 2),
                                   keep_ratio=0.7)),
    "pvmamba": ("pvmamba_tiny", dict(img_size=64, embed_dim=16, depths=(1, 1, 4, 1), num_heads=(2, 2, 2, 2),
                                     d_state=8)),
    "pvmamba_dcnv4": ("pvmamba_tiny", dict(img_size=64, embed_dim=16, depths=(1, 1, 1, 1), dsa_sampler="dcnv4")),
}
# The native ops each exported program must call (custom ops torch.ops.visionssm.*, py/ops/_library.py).
SS, CROSS = {"visionssm.selective_scan.default"}, {"visionssm.cross_scan.default", "visionssm.cross_merge.default"}
CUSTOM_OPS = {"vmamba": SS | CROSS, "vmamba_ssd": {"visionssm.ssd.default"} | CROSS, "vim": SS, "dyvm": SS,
              "pvmamba": set(), "pvmamba_dcnv4": {"visionssm.dcnv4.default"}}


def _model(case, seed=0):
    name, kwargs = SMALL[case]
    kwargs = dict(kwargs)
    img = kwargs.pop("img_size")
    torch.manual_seed(seed)
    return models.create_model(name, num_classes=10, img_size=img, **kwargs).eval()


@pytest.fixture(scope="module")
def programs():
    """One export per family (exporting is the slow part)."""
    out = {}
    for case in SMALL:
        model = _model(case)
        if case == "dyvm":  # layer 0 skips its backward branch, layer 1 its forward one
            with torch.no_grad():
                model.layers[0].mixer.block_head.bias.copy_(torch.tensor([5.0, -5.0]))
                model.layers[1].mixer.block_head.bias.copy_(torch.tensor([-5.0, 5.0]))
        out[case] = model, export.export_program(model, export.example_input(model))
    return out


def _custom_ops(program):
    """visionssm ops called by the program, torch.cond branches (DyVM) included."""
    return {str(n.target) for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)
            for n in m.graph.nodes if n.op == "call_function" and str(n.target).startswith("visionssm.")}


@pytest.mark.parametrize("case", sorted(SMALL))
def test_exported_program_equals_eager(programs, case):
    model, program = programs[case]
    assert _custom_ops(program) == CUSTOM_OPS[case]  # the native kernels, not a reference, run in it
    for seed in (0, 1):  # the example it was traced with and another input
        x = export.example_input(model, seed)
        with torch.no_grad():
            eager = model(x)  # default backends: the native CPU kernels
        torch.testing.assert_close(program.module()(x), eager, rtol=1e-5, atol=1e-5)


def test_eager_model_still_uses_native_kernels_after_export(programs, monkeypatch):
    sel = importlib.import_module("py.ops.selective_scan")
    calls = []
    op = sel.selective_scan_op
    monkeypatch.setattr(sel, "selective_scan_op", lambda *a: (calls.append(1), op(*a))[1])
    model, _ = programs["vim"]
    with torch.no_grad():
        model(export.example_input(model))
    assert calls, "the export left the model off its native kernels"
    # the ops' NaN/inf checks still run eagerly after an export (they skip only while tracing)
    u = torch.randn(1, 2, 5)
    with pytest.raises(ValueError, match="A must be finite"):
        sel.selective_scan(u, u, torch.full((2, 1), float("nan")), torch.randn(1, 1, 5), torch.randn(1, 1, 5))


def test_dyvm_exported_gates_skip_branches(programs):
    model, program = programs["dyvm"]
    assert sum("cond" in str(n.target) for n in program.graph.nodes) == 2 * len(model.layers)
    x = export.example_input(model)
    with torch.no_grad():
        model(x)
    gates = model.last_block_policy.flatten().tolist()  # the eager log is the real one, not a traced value
    assert gates[:4] == [1.0, 0.0, 0.0, 1.0]


def test_export_needs_batch_one():
    model = _model("pvmamba")
    with pytest.raises(export.ExportError, match="batch 1"):
        export.export_program(model, torch.randn(2, 3, 64, 64))


def test_onnx(tmp_path):
    model = _model("pvmamba")
    x = export.example_input(model)
    missing = export.missing_onnx_packages()
    if missing:  # this environment: the path must say which package is missing
        with pytest.raises(export.ExportError, match=missing[0]):
            export.export_onnx(model, x, tmp_path / "m.onnx")
        return
    export.export_onnx(model, x, tmp_path / "m.onnx")
    got = export._run_onnx(tmp_path / "m.onnx", x)
    if got is None:
        pytest.skip("onnxruntime is not installed: the ONNX file was written but not run")
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# CLIs
# ----------------------------------------------------------------------------------------------
VIM_KWARGS = '{"embed_dim": 32, "depth": 2, "patch_size": 8}'


def test_export_cli_writes_a_loadable_program(tmp_path, capsys):
    torch.manual_seed(3)
    model = models.create_model("vim_tiny", num_classes=10, img_size=32, embed_dim=32, depth=2, patch_size=8)
    ckpt = interop.save_state_dict(interop.to_official(model), tmp_path / "official.pth", wrap_key="model")
    out = tmp_path / "vim.pt2"
    code = export.main(["export", "--model=vim_tiny", f"--checkpoint={ckpt}", "--format=torch_export",
                        f"--output={out}", "--img_size=32", "--num_classes=10", f"--model_kwargs={VIM_KWARGS}"])
    assert code == 0, capsys.readouterr().err
    assert "max |exported - eager|" in capsys.readouterr().out
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(export.load_program(out).module()(x), model.eval()(x), rtol=1e-5, atol=1e-5)
    # In a fresh process the program loads once py.ops registered its ops, and only then.
    load = "import torch; p = torch.export.load({!r}); print(p.module()(torch.randn(1, 3, 32, 32)).shape)"
    for prefix, ok in (("", False), ("import py.ops; ", True)):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + sys.path))
        res = subprocess.run([sys.executable, "-c", prefix + load.format(str(out))], env=env, capture_output=True,
                             text=True, timeout=300)
        assert (res.returncode == 0) == ok, res.stderr[-2000:]
        assert ok or "failed to resolve torch.ops.visionssm.selective_scan" in res.stderr


def test_export_cli_errors_exit_2(tmp_path, capsys):
    assert export.main(["export", "--model=vim_tiny", "--output=x.pt2", "--format=tflite"]) == 2
    assert export.main(["export", "--model=nope", f"--output={tmp_path / 'x.pt2'}"]) == 2
    assert "unknown --model 'nope'" in capsys.readouterr().err
    if export.missing_onnx_packages():
        assert export.main(["export", "--model=vim_tiny", "--format=onnx", f"--output={tmp_path / 'x.onnx'}",
                            "--img_size=32", "--num_classes=10", f"--model_kwargs={VIM_KWARGS}"]) == 2
        assert "needs the Python package(s) onnx" in capsys.readouterr().err


def test_convert_cli_both_directions(tmp_path, capsys):
    kwargs = dict(embed_dim=32, depth=3, patch_size=8, pruning_loc=[1, 2])
    args = ["--model=dyvm_vim_tiny", "--num_classes=10", "--img_size=32",
            '--model_kwargs={"embed_dim": 32, "depth": 3, "patch_size": 8, "pruning_loc": [1, 2]}']
    torch.manual_seed(4)
    src = models.create_model("dyvm_vim_tiny", num_classes=10, img_size=32, **kwargs)
    official = tmp_path / "official.pth"
    torch.save({"model": {"module." + k: v for k, v in interop.to_official(src).items()}, "epoch": 1}, official)

    ours = tmp_path / "ours.safetensors"
    assert convert.main(["convert", *args, f"--input={official}", f"--output={ours}"]) == 0
    dst = models.create_model("dyvm_vim_tiny", num_classes=10, img_size=32, **kwargs)
    from safetensors.torch import load_file
    dst.load_state_dict(load_file(str(ours)), strict=True)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())

    back = tmp_path / "back.pth"
    assert convert.main(["convert", *args, f"--input={ours}", "--to=official", f"--output={back}"]) == 0
    written = torch.load(str(back), weights_only=True)["model"]
    assert "score_predictors.0.in_conv.1.weight" in written
    assert all(torch.equal(written[k], v) for k, v in interop.to_official(src).items())


def test_convert_cli_reports_mismatches(tmp_path, capsys):
    torch.manual_seed(5)
    model = models.create_model("vim_tiny", num_classes=10, img_size=32, embed_dim=32, depth=2, patch_size=8)
    state = interop.to_official(model)
    state["layers.0.mixer.D"] = torch.zeros(3)
    path = interop.save_state_dict(state, tmp_path / "bad.safetensors")
    code = convert.main(["convert", "--model=vim_tiny", "--num_classes=10", "--img_size=32",
                         f"--model_kwargs={VIM_KWARGS}", f"--input={path}", f"--output={tmp_path / 'o.safetensors'}"])
    assert code == 2
    assert "shape mismatch: layers.0.mixer.D: expected (64,), got (3,)" in capsys.readouterr().err
    assert convert.main(["convert", "--model=vim_tiny", f"--input={tmp_path / 'none.pth'}",
                         f"--output={tmp_path / 'o.safetensors'}"]) == 2
    assert "weights not found" in capsys.readouterr().err
