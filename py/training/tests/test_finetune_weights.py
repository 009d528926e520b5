"""--finetune and --teacher_checkpoint go through the one weights path (py.models.weights): official and
prefixed files load and are adapted, bad files are one `error:` line with exit 2, pickles never run."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import py.models as models

ROOT = pathlib.Path(__file__).resolve().parents[3]
KWARGS = {"embed_dim": 32, "depth": 2}
TINY = ["--model=vim_mnist", f"--model_kwargs={json.dumps(KWARGS)}", "--batch_size=32", "--limit_train=64",
        "--threads=1", "--progress=false", "--epochs=1"]


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def train(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + sys.path))
    env.pop("VISIONSSM_CALLER_DIR", None)
    return subprocess.run([sys.executable, "-m", "py.training.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def assert_one_error(res, *needles):
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), res.stderr[-3000:]
    assert "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    vim = models.create_model("vim_mnist", num_classes=5, **KWARGS)  # another class count than MNIST's 10
    torch.save({"model": {"module." + k: v for k, v in vim.state_dict().items()}}, root / "vim_ddp.pth")
    save_file({k: v.contiguous() for k, v in models.create_model(
        "vim_mnist", **KWARGS).state_dict().items()}, str(root / "teacher.safetensors"))
    (root / "garbage.safetensors").write_bytes(os.urandom(1000))
    save_file({k: v.contiguous() for k, v in models.create_model(
        "vmamba_tiny_s1l8", dims=16, depths=(1, 1, 1, 1)).state_dict().items()}, str(root / "vmamba.safetensors"))
    torch.save({"model": Payload(root / "PWNED")}, root / "evil.pth")
    return root


@pytest.mark.parametrize("flag", ["finetune", "teacher_checkpoint"])
@pytest.mark.parametrize("name,needle", [("garbage.safetensors", "is not a readable .safetensors file"),
                                         ("vmamba.safetensors", "checkpoint does not match"),
                                         ("evil.pth", "--trust_pickle")])
def test_bad_weights_are_one_error_line(files, tmp_path, flag, name, needle):
    teacher = ["--teacher_model=vim_mnist", f"--teacher_model_kwargs={json.dumps(KWARGS)}"]
    args = [f"--{flag}={files / name}"] + (teacher if flag == "teacher_checkpoint" else [])
    res = train(tmp_path, *TINY, *args, f"--output={tmp_path / 'out'}")
    assert_one_error(res, f"--{flag}", needle)
    assert not (files / "PWNED").exists()


def test_dyvm_finetune_from_prefixed_vim_with_other_head(files, tmp_path):
    """The DyVM recipe with a DDP-saved (module.) Vim file of another class count as both student init
    and teacher: the student adapts (new head, fresh predictors); the teacher must match exactly."""
    res = train(tmp_path, "--model=dyvm_vim_mnist", f"--model_kwargs={json.dumps(dict(KWARGS, pruning_loc=[1]))}",
                "--batch_size=32", "--limit_train=64", "--threads=1", "--progress=false", "--epochs=1",
                f"--finetune={files / 'vim_ddp.pth'}", "--teacher_model=vim_mnist",
                f"--teacher_model_kwargs={json.dumps(KWARGS)}", f"--teacher_checkpoint={files / 'teacher.safetensors'}",
                f"--output={tmp_path / 'out'}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "classifier head re-initialised: the checkpoint has 5 classes, the model 10" in res.stdout + res.stderr
    assert "predictor/block-head tensors are not in the checkpoint" in res.stdout + res.stderr
