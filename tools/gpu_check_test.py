"""tools/gpu_check.py on a machine without a GPU: it gets as far as it can (imports, the already
built extensions) and stops with a clear message and exit code 2 before the first GPU step."""
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run tools/gpu_check.py itself")
def test_stops_cleanly_without_a_gpu():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--no-build"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "no usable CUDA device (torch.cuda.is_available() is False)" in out
    assert "no kernel has run on a GPU" in out
    assert out.rstrip().splitlines()[-1].startswith("| GPU | STOP |")  # the table comes last


def test_build_step_targets_sm90a_with_both_front_door_extensions():
    sys.path.insert(0, str(ROOT))
    from tools import gpu_check
    from tools.build_kernels import read_extensions
    cmd = gpu_check.build_command()
    assert cmd[cmd.index("--cuda-archs") + 1] == "90a"
    known = read_extensions()["EXTENSIONS"]
    for name in gpu_check.EXTENSIONS:
        assert name in cmd and known[name]["cuda_srcs"], name
