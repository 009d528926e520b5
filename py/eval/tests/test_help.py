"""Every tool (eval tools and the trainer) answers -h/--help/--helpfull with its own flags first (no
absl noise), exit 0."""
import pytest

from py.eval.tests.cli import run_tool

TOOLS = {"py.eval.evaluate": "--checkpoint", "py.eval.erf": "--num_images", "py.eval.attention": "--token",
         "py.eval.profile_models": "--models", "py.eval.convert": "--input", "py.eval.export": "--format", "py.eval.predict": "--indices",
         "py.training.train": "--resume"}


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("arg", ["-h", "--help", "--helpfull"])
def test_help_exits_0_and_starts_with_the_tools_flags(tmp_path, tool, arg):
    res = run_tool(tool, tmp_path, arg)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0] == f"{tool.rsplit('.', 1)[-1]} flags:" and lines[1].startswith("  --"), res.stdout[:500]
    assert any(l.startswith(f"  {TOOLS[tool]}:") for l in lines)
    assert "absl" not in res.stdout and "runfiles" not in res.stdout and "--helpxml" not in res.stdout
