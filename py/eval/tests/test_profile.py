"""//py/eval:profile as a user runs it: exact params/FLOPs, throughput JSON, bad flags."""
import json
import os
import pathlib
import statistics
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[3]


def profile(*args, check=True):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("VISIONSSM_CALLER_DIR", None)
    # As a script, as `bazel run` starts it (its directory first on sys.path).
    cmd = [sys.executable, str(ROOT / "py" / "eval" / "profile_models.py"), "--threads=1", *args]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}\n{res.stderr[-4000:]}")
    return res


def test_params_and_flops_only(tmp_path):
    from py.models import count_flops, create_model
    res = profile("--models=vim_mnist,vim_tiny", "--skip-throughput", f"--output={tmp_path}")
    # vim_tiny: the published Vim-T count; vim_mnist: counted here on its registered 10 classes, 1×28×28.
    mnist = create_model("vim_mnist", num_classes=10, img_size=28)
    mnist_params = sum(p.numel() for p in mnist.parameters())
    assert "7,148,008" in res.stdout and f"{mnist_params:,}" in res.stdout
    rows = {r["model"]: r for r in json.loads((tmp_path / "profile.json").read_text())["models"]}
    assert rows["vim_tiny"]["params"] == 7_148_008
    assert rows["vim_mnist"]["params"] == mnist_params and rows["vim_mnist"]["input_size"] == [1, 28, 28]
    assert rows["vim_mnist"]["flops"] == count_flops(mnist, (1, 28, 28))["total"]
    assert "inference" not in rows["vim_mnist"] and "img/s" not in res.stdout
    lines = res.stdout.splitlines()
    assert [l.split()[0] for l in lines[2:4]] == ["vim_mnist", "vim_tiny"]  # side by side, in order


def test_tiny_throughput_run_writes_json(tmp_path):
    res = profile("--models=vim_mnist", "--batch-size=4", "--train-batch-size=3", "--warmup=1", "--repeats=3",
                  "--train-img-size=32", f"--output={tmp_path / 'out'}")
    report = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert report["device"] == "cpu" and report["repeats"] == 3 and "RSS" in report["memory_method"]
    row = report["models"][0]
    inf, tr = row["inference"], row["training"]
    assert (inf["batch_size"], inf["img_size"], tr["batch_size"], tr["img_size"]) == (4, 28, 3, 32)
    for phase in (inf, tr):
        assert len(phase["times_s"]) == 3 and all(t > 0 for t in phase["times_s"])
        assert phase["median_s"] == statistics.median(phase["times_s"])
        assert phase["img_per_s"] == pytest.approx(phase["batch_size"] / phase["median_s"])
        assert phase["img_per_s"] > 0 and phase["peak_memory_bytes"] >= 0
    # Training holds gradients and AdamW moments for every parameter: at least 3 × the fp32 weights.
    assert tr["peak_memory_bytes"] >= 3 * 4 * row["params"]
    assert "infer img/s" in res.stdout and "peak memory:" in res.stdout


@pytest.mark.parametrize("args, message", [
    ([], "--models is required"),
    (["--models=vim_mnist,no_such_model"], "unknown --model 'no_such_model'"),
    (["--models=vim_mnist", "--repeats=0"], "--repeats must be > 0"),
    (["--models=vim_mnist", "--amp=fp16", "--device=cpu"], "--amp=fp16 needs CUDA"),
])
def test_bad_flags_give_one_line_and_exit_2(args, message):
    res = profile(*args, check=False)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], res.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_gpu_is_a_clear_error():
    res = profile("--models=vim_mnist", "--device=cuda", check=False)
    assert res.returncode == 2 and "--device=cuda but torch sees no CUDA device" in res.stderr
