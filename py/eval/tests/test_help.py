"""Every eval tool answers -h/--help/--helpfull with its own flags first (no absl noise), exit 0."""
import pytest

from py.eval.tests.cli import run_tool

TOOLS = {"evaluate": "--checkpoint", "erf": "--num_images", "attention": "--token", "profile_models": "--models",
         "convert": "--input", "export": "--format"}


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("arg", ["-h", "--help", "--helpfull"])
def test_help_exits_0_and_starts_with_the_tools_flags(tmp_path, tool, arg):
    res = run_tool(f"py.eval.{tool}", tmp_path, arg)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0] == f"{tool} flags:" and lines[1].startswith("  --"), res.stdout[:500]
    assert any(l.startswith(f"  {TOOLS[tool]}:") for l in lines)
    assert "absl" not in res.stdout and "runfiles" not in res.stdout and "--helpxml" not in res.stdout
