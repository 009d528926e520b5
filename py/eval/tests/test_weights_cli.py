"""Every eval tool reads weights through py.models.weights: nothing is unpickled, official and
`module.`-prefixed files load, bad files give one `error:` line and exit 2."""
import json
import os
import pathlib

import pytest
import torch
from safetensors.torch import save_file

import py.models as models
from py.eval import convert, export
from py.eval.tests.cli import assert_usage_error, run_tool
from py.models import interop

KWARGS = {"embed_dim": 32, "depth": 2}
CONFIG = {"model": "vim_mnist", "model_kwargs": KWARGS, "img_size": 28, "in_chans": 1, "dataset": "mnist5k",
          "val_fraction": 0.2, "seed": 0}
# (module, arguments that make it run fast on a vim_mnist checkpoint)
TOOLS = {
    "evaluate": ("py.eval.evaluate", ["--limit=16", "--threads=1", "--progress=false"]),
    "erf": ("py.eval.erf", ["--num_images=2", "--batch_size=2", "--threads=1"]),
    "attention": ("py.eval.attention", ["--layers=0", "--threads=1", "--dtype=float32"]),
}


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """A run directory as the trainer's format 1 wrote it, with a malicious pickled state.pt."""
    root = tmp_path_factory.mktemp("planted")
    torch.manual_seed(0)
    model = models.create_model("vim_mnist", **KWARGS)
    step = root / "run" / "checkpoints" / "step_000000010"
    step.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(step / "model.safetensors"))
    torch.save({"config": Payload(root / "PWNED"), "global_step": 10}, step / "state.pt")
    (root / "run" / "checkpoints" / "latest").write_text("step_000000010\n")
    (root / "run" / "config.json").write_text(json.dumps(CONFIG))
    return root, model


@pytest.mark.parametrize("tool,target", [("evaluate", "run"), ("evaluate", "file"), ("erf", "run"),
                                         ("attention", "file")])
def test_planted_state_pt_is_never_unpickled(planted_run, tool, target):
    root, _ = planted_run
    run = root / "run"
    source = run if target == "run" else run / "checkpoints" / "step_000000010" / "model.safetensors"
    module, args = TOOLS[tool]
    out = root / f"out_{tool}_{target}"
    res = run_tool(module, root, f"--checkpoint={source}", *args,
                   f"--output={out}" + (".json" if tool == "evaluate" else ""))
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (root / "PWNED").exists()


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("content", [b"", os.urandom(2048)], ids=["empty", "random"])
def test_bad_safetensors_is_one_error_line(tmp_path, tool, content):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(content)
    module, args = TOOLS[tool]
    res = run_tool(module, tmp_path, "--model=vim_mnist", f"--checkpoint={bad}", *args,
                   f"--output={tmp_path / 'out'}")
    assert_usage_error(res, "is not a readable .safetensors file", tmp_path / "out")
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("content", [b"", os.urandom(2048)], ids=["empty", "random"])
def test_bad_files_in_convert_and_export(tmp_path, capsys, content):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(content)
    for main, extra in ((convert.main, []), (export.main, ["--format=torch_export"])):
        key = "--input" if main is convert.main else "--checkpoint"
        code = main(["tool", "--model=vim_mnist", f"{key}={bad}", f"--output={tmp_path / 'o.x'}", *extra])
        err = capsys.readouterr().err
        assert code == 2 and [l for l in err.splitlines() if l.startswith("error:")] == [err.strip()], err
        assert "is not a readable .safetensors file" in err and not (tmp_path / "o.x").exists()


def test_planted_pickle_refused_by_convert_and_export(tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    torch.save({"model": Payload(tmp_path / "PWNED")}, evil)
    for main, key in ((convert.main, "--input"), (export.main, "--checkpoint")):
        assert main(["tool", "--model=vim_mnist", f"{key}={evil}", f"--output={tmp_path / 'o.pt2'}"]) == 2
        assert "--trust_pickle" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists()


def test_official_dyvm_file_with_module_prefix_evaluates(tmp_path):
    """The README promises that the eval tools take official checkpoints."""
    torch.manual_seed(0)
    dyvm = models.create_model("dyvm_vim_mnist", **KWARGS, pruning_loc=(1,))
    official = {"module." + k: v for k, v in interop.to_official(dyvm).items()}
    assert any(k.startswith("module.score_predictors.") for k in official)
    torch.save({"model": official, "model_ema": official, "epoch": 29}, tmp_path / "dyvm_official.pth")
    module, args = TOOLS["evaluate"]
    kwargs = json.dumps(dict(KWARGS, pruning_loc=[1]))
    res = run_tool(module, tmp_path, "--model=dyvm_vim_mnist", f"--model_kwargs={kwargs}",
                   "--checkpoint=dyvm_official.pth", *args, "--output=eval.json", "--weights=ema")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert list(report["results"]) == ["ema"] and report["results"]["ema"]["num_images"] == 16
