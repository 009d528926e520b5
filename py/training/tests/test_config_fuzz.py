"""Every trainer flag, given on the command line or in a YAML --config, with bad and edge values: each
gives a normal start (config resolved, Trainer set up) or exactly one usage error (exit 2), never a
traceback. Plain seeded loops; in-process up to Trainer setup, plus a few real subprocess runs."""
import json
import random

import pytest
import yaml
from absl import flags

from py.training import config, train
from py.training.tests.support import (TINY, assert_usage_error, main_in_process, make_folder,
                                      process_state_restored, subprocess_train)

SEED = 20261123
FLAGS = config.FLAGS
# The smallest model: setup takes milliseconds.
BASE = {"model": "vim_mnist", "model_kwargs": '{"embed_dim": 8, "depth": 1}', "batch_size": "16",
        "limit_train": "64", "threads": "1", "progress": "false", "epochs": "1", "num_workers": "0"}

EDGE_TEXT = ["", " ", "0", "-1", "1", "2", "3", "-0.0", "0.5", "1.5", "1.7", "1e-5", "nan", "inf", "-inf", "1e308",
             "1e-320", "2147483647", "2147483648", "-2147483649", "9223372036854775808", "1" + "0" * 40, "0x10",
             "1_000", "abc", "true", "false", "None", "null", "{}", "[1]", '{"a": 1}', '{"depth": -1}', "é", "x" * 300,
             "../nope", "sub/..", "file.txt", "a\x00b", "\t", "--epochs=3",
             # values that are good for some flag, so every kind of flag also gets normal starts
             "auto", "never", "cpu", "bf16", "skip", "vim_mnist", "rand-m9-mstd0.5-inc1", "folder", "out/x"]
EDGE_YAML = ["1e-5", "1.0e-5", "1.7", "'5'", '"5"', "5", "-5", "0", "yes", "no", "true", "~", "null", ".nan", ".inf",
             "-.inf", "2024-01-01", "[1, 2]", "{a: 1}", "{depth: 2}", "''", "'abc'", "!!binary aGVsbG8=", "0x1F",
             "1_000", "12:30", "1" + "0" * 30, "'a\\0b'", '"a\\0b"', "'../nope'", "3.0", "1e400", "&a 3"]


def _random_text(rng):
    kind = rng.randrange(5)
    if kind == 0:
        return str(rng.randint(-10**rng.randint(1, 25), 10**rng.randint(1, 25)))
    if kind == 1:
        return repr(rng.uniform(-1e3, 1e3) * 10**rng.randint(-12, 12))
    if kind == 2:
        return "".join(rng.choice("abcXYZ019 -_./:{}[]\"',=éß") for _ in range(rng.randint(0, 12)))
    if kind == 3:
        return rng.choice(["auto", "never", "none", "cpu", "cuda", "bf16", "fp16", "stop", "skip", "vim_mnist",
                           "rand-m9-mstd0.5-inc1", "rand-m99", "augmix-m5", "original", "v0", "x-y"])
    return json.dumps({rng.choice(["depth", "embed_dim", "nope"]): rng.choice([0, -1, 2, "x", None, [1]])})


def _cases(rng, n_random):
    names = [n for n in config.flag_names() if n != "config"]
    for name in names:
        for text in EDGE_TEXT + [_random_text(rng) for _ in range(n_random)]:
            yield name, text


def _outcome(argv):
    """('ok', cfg) or ('error', message) for `train ARGV` up to the end of Trainer setup; anything else
    propagates (a traceback for the user)."""
    FLAGS.unparse_flags()
    try:
        FLAGS(["train", *argv])
    except flags.Error as exc:  # what parse_flags_or_exit turns into one error line
        return "error", str(exc)
    try:
        cfg = config.resolve()
        trainer = train.Trainer(cfg, explicit=config.explicit_keys())
        trainer.close()
        return "ok", cfg
    except train.USAGE_ERRORS as exc:
        return "error", train.one_line(exc)


def _argv(overrides):
    values = dict(BASE, **overrides)
    return [f"--{k}={v}" for k, v in values.items()]


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Relative paths (outputs, data) resolve inside tmp_path; a tiny ImageFolder and a file are there."""
    monkeypatch.setenv("VISIONSSM_CALLER_DIR", str(tmp_path))
    make_folder(tmp_path / "folder", {"train": 8, "val": 1})
    (tmp_path / "file.txt").write_text("not a directory\n")
    (tmp_path / "sub").mkdir()
    yield tmp_path
    FLAGS.unparse_flags()


def _check(name, text, kind, result, where):
    if kind == "error":
        assert result.strip() and "\n" not in train.one_line(result), (name, text, result)
        assert "Traceback" not in result
    else:
        assert isinstance(result, dict) and result["epochs"] >= 1, (name, text, where)


def test_fuzz_every_flag_on_the_command_line(sandbox):
    rng = random.Random(SEED)
    seen = {"ok": 0, "error": 0}
    with process_state_restored():
        for name, text in _cases(rng, n_random=4):
            overrides = {name: text, "output": f"out/{name}"} if name != "output" else {name: text}
            try:
                kind, result = _outcome(_argv(overrides))
            except Exception as exc:  # a traceback for the user
                raise AssertionError(f"--{name}={text!r} raised {type(exc).__name__}: {exc}") from exc
            _check(name, text, kind, result, "command line")
            seen[kind] += 1
    assert seen["ok"] > 100 and seen["error"] > 500, seen


def test_fuzz_every_flag_in_a_yaml_config_follows_the_command_line_rules(sandbox):
    rng = random.Random(SEED + 1)
    seen = {"ok": 0, "error": 0}
    cfg_file = sandbox / "fuzz.yaml"
    with process_state_restored():
        for name in [n for n in config.flag_names() if n != "config"]:
            texts = EDGE_YAML + [yaml.safe_dump(rng.choice([rng.random() * 10**rng.randint(-8, 8),
                                                            rng.randint(-10**6, 10**6), _random_text(rng)]))
                                 .replace("\n...\n", "").strip() for _ in range(4)]
            for text in texts:
                cfg_file.write_text(f"{name}: {text}\n")
                base = {k: v for k, v in BASE.items() if k != name}
                base["output"] = base.get("output", f"out/{name}")
                argv = [f"--{k}={v}" for k, v in base.items() if k != name] + [f"--config={cfg_file}"]
                try:
                    kind, result = _outcome(argv)
                except Exception as exc:
                    raise AssertionError(f"YAML {name}: {text!r} raised {type(exc).__name__}: {exc}") from exc
                _check(name, text, kind, result, "yaml")
                seen[kind] += 1
                # A quoted YAML string is exactly that text on the command line.
                try:
                    value = yaml.safe_load(f"v: {text}")["v"]
                except yaml.YAMLError:
                    continue
                if isinstance(value, str) and "\0" not in value:
                    cli_kind, cli_result = _outcome(argv[:-1] + [f"--{name}={value}"])
                    assert cli_kind == kind, (name, text, kind, result, cli_kind, cli_result)
                    if kind == "ok":
                        assert {k: v for k, v in cli_result.items() if k != "config"} == \
                               {k: v for k, v in result.items() if k != "config"}, (name, text)
    assert seen["ok"] > 100 and seen["error"] > 300, seen


@pytest.mark.parametrize("text, expect", [
    ("min_lr: 1e-5\n", {"min_lr": 1e-5}),         # YAML 1.1 reads 1e-5 as a string: parsed as --min_lr=1e-5
    ("clip_grad: \"5\"\n", {"clip_grad": 5.0}),  # as --clip_grad=5
    ("warmup_epochs: 1\n", {"warmup_epochs": 1.0}),
    ("compile: yes\n", {"compile": True}),
    ("model_kwargs: {embed_dim: 8, depth: 1}\n", {"model_kwargs": {"embed_dim": 8, "depth": 1}}),
    ("img_size: null\n", {"img_size": 28}),
    ("epochs: 1.7\n", "bad value 1.7 for epochs: expected an integer"),
    ("epochs: true\n", "bad value True for epochs: expected an integer"),
    ("lr: .nan\n", "--lr (from --config"),
    ("lr: null\n", "lr is null; expected a number"),
    ("batch_size: [1, 2]\n", "batch_size must be an integer, got a list"),
    ("model_kwargs: [1]\n", "model_kwargs must be an integer"[:0] + "model_kwargs must be a string, got a list"),
    ("helpfull: true\n", "unknown flag 'helpfull'"),
    ("[1, 2]\n", "must be a mapping"),
    ("epochs: [\n", "is not valid YAML"),
])
def test_yaml_values_are_parsed_and_checked_like_their_flags(sandbox, text, expect):
    path = sandbox / "c.yaml"
    path.write_text(text)
    FLAGS.unparse_flags()
    FLAGS(["train", f"--config={path}", "--output=o"])
    if isinstance(expect, dict):
        cfg = config.resolve()
        for k, v in expect.items():
            assert cfg[k] == v and type(cfg[k]) is type(v), (k, cfg[k])
    else:
        with pytest.raises(config.ConfigError) as info:
            config.resolve()
        assert expect in str(info.value) and "\n" not in train.one_line(info.value)


def test_command_line_failure_is_one_error_line_and_exit_2_in_a_real_process(tmp_path):
    code, err = subprocess_train(*TINY, "--val_fraction=1.5", f"--output={tmp_path / 'x'}", timeout=120)
    assert_usage_error(code, err, "--val_fraction must be a finite number in (0.0, 1.0), got 1.5")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, needle", [
    (["--num_workers=-1"], "--num_workers must be in 0..256, got -1"),
    (["--threads=-1"], "--threads must be in 0..1024, got -1"),
    (["--min_lr=0.1", "--lr=0.01"], "--min_lr must be a finite number in [0.0, 0.01], got 0.1"),
    (["--mixup=0.8", "--batch_size=15"], "need an even --batch_size"),
    (["--randaug=foo"], "--randaug 'foo' is not a timm augmentation spec"),
    (["--seed=-1"], "--seed must be in 0..2147483647, got -1"),
    (["--resume=bogus"], "--resume"),
    (["--limit_train=8"], "--limit_train=8"),
])
def test_command_line_failures_are_one_error_line_and_exit_2(tmp_path, capsys, args, needle):
    code, err = main_in_process([*TINY, *args, f"--output={tmp_path / 'x'}"], capsys)
    assert_usage_error(code, err, needle)
    assert not (tmp_path / "x").exists()


def test_yaml_config_failure_through_the_real_cli(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("min_lr: 1e-5\nepochs: 1.7\n")
    code, err = subprocess_train(f"--config={cfg}", f"--output={tmp_path / 'x'}", timeout=120)
    assert_usage_error(code, err, f"--config {cfg}", "epochs", "expected an integer")
