"""The shared command-line layer: help, flag spelling, one-line errors with exit code 2."""
import pytest
from absl import flags

from py.common import cli


def _flags():
    fv = flags.FlagValues()
    cli.define_model_flags(fv)
    cli.define_runtime_flags(fv)
    flags.DEFINE_integer("batch_size", 8, "images per step", flag_values=fv)
    return fv


@pytest.mark.parametrize("arg", ["-h", "--help", "--helpfull"])
def test_help_starts_with_the_tools_own_flags_and_exits_0(capsys, arg):
    fv = _flags()
    assert cli.parse(["tool", arg], fv, "The tool's documentation.", prog="tool") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "tool flags:"
    names = [l.split(":")[0].strip() for l in lines[1:] if l.startswith("  --")]
    assert names == sorted(["--batch_size", "--checkpoint", "--device", "--model", "--model_kwargs", "--threads",
                            "--trust_pickle", "--weights"])
    assert "  --device: <auto|cpu|cuda>: auto: CUDA if available (default: auto)" in out
    assert out.rstrip().endswith("The tool's documentation.")
    assert "absl" not in out and "runfiles" not in out and "--logtostderr" not in out


def test_dashes_in_names_and_errors(capsys):
    fv = _flags()
    assert cli.parse(["tool", "--batch-size=3"], fv) is None and fv.batch_size == 3
    for argv, needle in ((["tool", "--threads=x"], "threads"), (["tool", "--nope=1"], "nope"),
                         (["tool", "--device=tpu"], "device"), (["tool", "stray"], "unexpected arguments")):
        fv = _flags()
        assert cli.parse(argv, fv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error:") and needle in err, err


def test_run_maps_usage_errors_to_exit_2(capsys):
    fv = _flags()

    def bad():
        raise cli.UsageError("--model nope is not registered")
    assert cli.run(bad, ["tool"], fv) == 2
    assert capsys.readouterr().err == "error: --model nope is not registered\n"
    assert cli.run(lambda: 3, ["tool"], _flags()) == 3
    assert cli.run(lambda: {"a": 1}, ["tool"], _flags()) == 0

    def crash():
        raise RuntimeError("a bug")
    with pytest.raises(RuntimeError):  # bugs keep their traceback
        cli.run(crash, ["tool"], _flags())


def test_threads_are_checked():
    with pytest.raises(cli.UsageError, match=r"--threads must be in 0\.\.1024, got -1"):
        cli.set_threads(-1)


def test_parse_json_dict():
    assert cli.parse_json_dict("model_kwargs", None) == {} and cli.parse_json_dict("x", '{"a": 1}') == {"a": 1}
    with pytest.raises(cli.UsageError, match="--model_kwargs must be a JSON object"):
        cli.parse_json_dict("model_kwargs", "[1]")
    with pytest.raises(cli.UsageError, match="not valid JSON"):
        cli.parse_json_dict("model_kwargs", "{")
