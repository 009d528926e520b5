"""Running a py.eval command-line tool in a subprocess, as a user would, for the tools' tests."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[3]


def run_tool(module, cwd, *args, timeout=300):
    """`python -m <module> <args>` in `cwd` (relative --output paths land there)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + sys.path))
    env.pop("VISIONSSM_CALLER_DIR", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_usage_error(res, message, output_dir):
    """Exit status 2, exactly one `error:` line containing `message`, and nothing written."""
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], res.stderr[-2000:]
    assert not output_dir.exists()
