"""//py/eval:evaluate end to end on a tiny trainer run, checked against a direct computation."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parents[3]
KWARGS = {"embed_dim": 32, "depth": 2}
# A tiny vim_mnist run: seconds on two cores. seed 3 (not the default 0) so the split must come from
# the run's config; EMA on so both weight sets exist.
TRAIN = ["--model=vim_mnist", f"--model_kwargs={json.dumps(KWARGS)}", "--batch_size=32", "--limit_train=320",
         "--threads=1", "--progress=false", "--warmup_epochs=0.5", "--lr=3e-3", "--epochs=1", "--seed=3",
         "--ema_decay=0.9"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("VISIONSSM_CALLER_DIR", None)
    return env


def _run(module, *args, check=True):
    cmd = [sys.executable, "-m", module, *args]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}\n{res.stderr[-4000:]}")
    return res


def evaluate(*args, check=True):
    """The tool as a user runs it, in its own process."""
    return _run("py.eval.evaluate", "--progress=false", "--threads=1", *args, check=check)


def evaluate_here(capsys, *args):
    """The same in this process (saves the ~5 s import per call): (exit code, stdout, stderr)."""
    from absl import flags
    from py.common import cli
    from py.eval import evaluate as tool
    flags.FLAGS.unparse_flags()  # back to defaults, nothing `present`
    code = cli.run(tool.main, ["evaluate", "--progress=false", *args], flags.FLAGS, tool.__doc__)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    _run("py.training.train", *TRAIN, f"--output={out}")
    return out


def _step_dir(run):
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def _direct(state, limit=None):
    """top-1 %, top-5 %, per-class top-1 % of the weights, computed here without the tool."""
    from py.models import create_model
    from py.training.data import mnist5k_datasets
    model = create_model("vim_mnist", num_classes=10, img_size=28, **KWARGS)
    model.load_state_dict(state)
    model.eval()
    _, val = mnist5k_datasets(val_fraction=0.2, seed=3, in_chans=1, img_size=28)
    n = limit or len(val)
    x = torch.stack([val[i][0] for i in range(n)])
    y = torch.tensor([val[i][1] for i in range(n)])
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(-1)
    top5 = logits.topk(5, -1).indices
    top5_hits = sum(int(y[i] in top5[i]) for i in range(n))
    per_class = {str(c): 100.0 * int((pred[y == c] == c).sum()) / int((y == c).sum()) for c in range(10)}
    return 100.0 * int((pred == y).sum()) / n, 100.0 * top5_hits / n, per_class


def test_run_dir_reports_raw_and_ema_matching_a_direct_computation(run_dir, tmp_path):
    out = tmp_path / "eval.json"
    res = evaluate(f"--checkpoint={run_dir}", f"--output={out}")
    report = json.loads(out.read_text())
    assert report["model"] == "vim_mnist" and report["model_kwargs"] == KWARGS
    assert report["dataset"]["name"] == "mnist5k" and report["dataset"]["seed"] == 3
    assert report["dataset"]["num_images"] == 1000  # 20% of 5000
    assert set(report["results"]) == {"model", "ema"}
    step = _step_dir(run_dir)
    for label, file in (("model", "model.safetensors"), ("ema", "ema.safetensors")):
        got = report["results"][label]
        top1, top5, per_class = _direct(load_file(str(step / file)))
        assert got["top1"] == pytest.approx(top1, abs=1e-6), label
        assert got["top5"] == pytest.approx(top5, abs=1e-6), label
        assert got["per_class"] == pytest.approx(per_class, abs=1e-6), label
        assert f"{got['top1']:.2f}" in res.stdout  # the table
    assert report["results"]["model"]["per_class"] != report["results"]["ema"]["per_class"]


def test_split_is_the_trainers(run_dir, capsys):
    # --limit_train=320 shrinks training only: the trainer validated on its whole val split (1000 images).
    code, stdout, _ = evaluate_here(capsys, f"--checkpoint={run_dir / 'checkpoints'}", "--batch_size=37",
                                    f"--output={run_dir.parent / 'limit.json'}")
    report = json.loads((run_dir.parent / "limit.json").read_text())["results"]
    trained = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert report["model"]["top1"] == pytest.approx(trained["val_top1"], abs=1e-6)
    assert report["model"]["top5"] == pytest.approx(trained["val_top5"], abs=1e-6)
    assert report["model"]["loss"] == pytest.approx(trained["val_loss"], rel=1e-5)
    assert report["ema"]["top1"] == pytest.approx(trained["val_top1_ema"], abs=1e-6)
    assert code == 0 and "(1000 images)" in stdout


def test_single_weights_file_with_model_flag(run_dir, tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    shutil.copy(_step_dir(run_dir) / "model.safetensors", weights)
    out = tmp_path / "w.json"
    evaluate_here(capsys, f"--checkpoint={weights}", "--model=vim_mnist", f"--model_kwargs={json.dumps(KWARGS)}",
             "--seed=3", f"--output={out}")
    got = json.loads(out.read_text())["results"]["model"]
    top1, top5, _ = _direct(load_file(str(weights)))
    assert got["top1"] == pytest.approx(top1, abs=1e-6) and got["top5"] == pytest.approx(top5, abs=1e-6)


def test_random_weights_warn(tmp_path, capsys):
    code, _, stderr = evaluate_here(capsys, "--model=vim_mnist", "--limit=64", f"--output={tmp_path / 'r.json'}")
    assert code == 0 and "RANDOM weights" in stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["random_weights"] and report["dataset"]["num_images"] == 64


def test_imagefolder_val_split(tmp_path, capsys):
    from PIL import Image
    for split in ("train", "val"):
        for c, color in (("cat", 40), ("dog", 200)):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 40), (color, i * 30, 0)).save(tmp_path / "data" / split / c / f"{i}.png")
    out = tmp_path / "if.json"
    evaluate_here(capsys, "--model=vim_mnist", "--img_size=28", "--in_chans=3", f"--data_path={tmp_path / 'data'}",
             f"--output={out}")
    report = json.loads(out.read_text())
    assert report["dataset"]["name"] == "imagefolder" and report["dataset"]["num_images"] == 6
    assert set(report["results"]["random"]["per_class"]) == {"cat", "dog"}
    assert report["results"]["random"]["top5"] == 100.0  # 2 classes: both are in the top 5


@pytest.mark.parametrize("args, message", [
    (["--checkpoint=/no/such/run"], "--checkpoint: weights not found: /no/such/run does not exist"),
    (["--model=vim_mnist", "--data_path=/no/such/data"], "has no val/ directory"),
    (["--model=no_such_model"], "unknown --model"),
    (["--model=vim_mnist", "--batch-size=0"], "--batch_size must be > 0"),
    (["--no_such_flag=1"], "no_such_flag"),
])
def test_bad_flags_give_one_line_and_exit_2(args, message, capsys):
    code, _, stderr = evaluate_here(capsys, *args)
    assert code == 2, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], stderr[-2000:]


def test_bad_path_from_the_command_line():
    res = evaluate("--checkpoint=/no/such/run", check=False)
    assert res.returncode == 2 and res.stderr.strip() == "error: --checkpoint: weights not found: /no/such/run does not exist"


def test_weights_file_problems_exit_2(run_dir, tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    shutil.copy(_step_dir(run_dir) / "model.safetensors", weights)
    code, _, err = evaluate_here(capsys, f"--checkpoint={weights}")  # no run config next to it, no --model
    assert code == 2 and "also pass --model=NAME" in err
    code, _, err = evaluate_here(capsys, f"--checkpoint={weights}", "--model=vim_mnist")  # depth 6 ≠ 2
    assert code == 2 and "does not fit the model" in err
    empty = tmp_path / "empty_run"
    empty.mkdir()
    code, _, err = evaluate_here(capsys, f"--checkpoint={empty}")
    assert code == 2 and "neither a weights file nor a trainer run directory" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_gpu_is_a_clear_error(capsys):
    code, _, err = evaluate_here(capsys, "--model=vim_mnist", "--device=cuda")
    assert code == 2 and "--device=cuda but torch sees no CUDA device" in err
