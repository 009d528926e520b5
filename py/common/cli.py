"""The one command-line layer of the trainer and the eval tools.

    FLAGS = flags.FlagValues()                      # or absl's global flags.FLAGS
    cli.define_model_flags(FLAGS)                   # --model, --model_kwargs, --checkpoint, --weights, --trust_pickle
    cli.define_runtime_flags(FLAGS)                 # --device, --threads
    if __name__ == "__main__":
        sys.exit(cli.run(main, sys.argv, FLAGS, __doc__))

Every tool behaves the same: `-h`/`--help`/`--helpfull` print the tool's own flags (not absl's) and its
documentation, exit 0; `--some-flag` is accepted for `--some_flag`; a bad flag, value, path or file
prints one `error:` line and exits 2 (UsageError, which py.models' WeightsError is, FileNotFoundError).
"""
import json
import pathlib
import sys
import textwrap

from absl import flags

__all__ = ["UsageError", "define_model_flags", "define_runtime_flags", "help_text", "parse", "parse_json_dict",
           "pick_device", "run", "set_threads"]

HELP_ARGS = ("-h", "-help", "--help", "--helpfull", "--helpshort")


class UsageError(Exception):
    """A bad flag value, path or file: reported in one `error:` line, exit code 2."""


# ----------------------------------------------------------------------------------------------
# Shared flags: defined once here, for every tool that takes them
# ----------------------------------------------------------------------------------------------
def _define(fv, kind, name, default, help_text, enum_values=None, **kwargs):
    if name in fv:  # a module imported by two tools defines its flags once
        return
    if kind == "enum":
        flags.DEFINE_enum(name, default, enum_values, help_text, flag_values=fv, **kwargs)
    else:
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=fv, **kwargs)


def define_model_flags(fv=flags.FLAGS, checkpoint="checkpoint", checkpoint_help=None, weights=("model", "ema"),
                       weights_default="model", model_default=None, model_kwargs_default=None):
    """--model, --model_kwargs, --trust_pickle and, unless checkpoint is None, --<checkpoint> and --weights."""
    _define(fv, "string", "model", model_default, "registered model name (py.models.list_models())")
    _define(fv, "string", "model_kwargs", model_kwargs_default, "JSON object of model config overrides, e.g. "
            "'{\"depth\": 4}'")
    _define(fv, "bool", "trust_pickle", False, "allow unpickling a torch file that the safe loader refuses "
            "(pickles can run code: only for a file you trust)")
    if checkpoint is None:
        return
    _define(fv, "string", checkpoint, None, checkpoint_help or (
        "weights: a .safetensors or torch file (ours or official), a trainer step directory, or a trainer "
        "run directory (its newest checkpoint whose checksums verify, and its config)"))
    _define(fv, "enum", "weights", weights_default,
            "which weights of the checkpoint: model (the trained weights) or ema (their moving average)"
            + (", or all of them" if "all" in weights else ""), enum_values=list(weights))


SHARED_FLAGS = ("model", "model_kwargs", "trust_pickle", "device", "threads")  # what the trainer shares


MAX_THREADS = 1024


def define_runtime_flags(fv=flags.FLAGS):
    """--device and --threads (checked by set_threads, or by the trainer's config)."""
    _define(fv, "enum", "device", "auto", "auto: CUDA if available", enum_values=["auto", "cpu", "cuda"])
    _define(fv, "integer", "threads", 0, f"CPU threads for torch, 0..{MAX_THREADS} (0: torch's default)")


def parse_json_dict(name, text):
    """The JSON object given to --<name> (None or empty: {})."""
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--{name} is not valid JSON: {exc}")
    if not isinstance(value, dict):
        raise UsageError(f"--{name} must be a JSON object, got {text!r}")
    return value


def pick_device(kind):
    """torch.device for --device=auto|cpu|cuda; cuda without a visible GPU is a usage error."""
    import torch
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device=cuda but torch sees no CUDA device (use --device=cpu)")
    return torch.device(kind)


def set_threads(threads):
    """Applies --threads (0: torch's default); out of range is a UsageError."""
    import torch
    if not 0 <= threads <= MAX_THREADS:
        raise UsageError(f"--threads must be in 0..{MAX_THREADS}, got {threads}")
    if threads:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Parsing, help, errors
# ----------------------------------------------------------------------------------------------
def _own_flags(fv):
    """The tool's flags: every flag of `fv` except absl's own (logging, help, ...)."""
    seen = {}
    for module, module_flags in fv.flags_by_module_dict().items():
        if module.startswith("absl."):
            continue
        for flag in module_flags:
            seen.setdefault(flag.name, flag)
    return [seen[name] for name in sorted(seen)]


def help_text(fv, doc, prog):
    """The tool's flags (name, meaning, default), then its documentation."""
    lines = [f"{prog} flags:"]
    for flag in _own_flags(fv):
        value = str(flag.default).lower() if isinstance(flag.default, bool) else flag.default
        default = "" if flag.default is None else f" (default: {value})"
        lines += textwrap.wrap(f"--{flag.name}: {flag.help}{default}", 100, initial_indent="  ",
                               subsequent_indent="      ")  # enum help already lists its choices
    if doc:
        lines += ["", doc.strip()]
    return "\n".join(lines)


def _normalise(argv):
    out = [argv[0]]
    for arg in argv[1:]:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + eq + value
        out.append(arg)
    return out


def _prog(argv):
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return (spec.name.rsplit(".", 1)[-1] if spec is not None else pathlib.Path(argv[0]).stem) or "tool"


def parse(argv, fv=flags.FLAGS, doc=None, prog=None):
    """Parses argv into fv. Returns None when the tool should run, else its exit code: 0 after
    printing the help, 2 after one `error:` line."""
    prog = prog or _prog(argv)
    if any(a in HELP_ARGS for a in argv[1:]):
        print(help_text(fv, doc, prog))
        return 0
    try:
        rest = fv(_normalise(argv))
    except flags.Error as exc:
        print(f"error: {' '.join(str(exc).split())} (see --help)", file=sys.stderr)
        return 2
    if len(rest) > 1:
        print(f"error: unexpected arguments {rest[1:]} (flags are --name=value; see --help)", file=sys.stderr)
        return 2
    return None


def run(main_fn, argv, fv=flags.FLAGS, doc=None, prog=None, errors=()):
    """parse(argv), then main_fn(): its return value (None: 0) is the exit code. UsageError,
    FileNotFoundError (py.models' WeightsError is a UsageError) and `errors` become one `error:` line
    and exit code 2."""
    code = parse(argv, fv, doc, prog)
    if code is not None:
        return code
    try:
        result = main_fn()
    except (UsageError, FileNotFoundError, *errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if result is None or not isinstance(result, int) else result
