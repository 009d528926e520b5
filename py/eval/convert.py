"""Convert checkpoints between the official repositories' layout and ours.

    ./bazelw run //py/eval:convert -- --model=vmamba_tiny_s1l8 --input=official.pth --output=ours.safetensors
    ./bazelw run //py/eval:convert -- --model=dyvm_vim_small --input=ours.safetensors --to=official \\
        --output=dyvm_official.pth

--to=ours (default): reads an official checkpoint through py.models.weights (its "model" state
dict, or "model_ema" with --weights=ema; "module." prefixes removed), converts it with
py.models.interop, checks it against the
model built from --model (and --num_classes/--img_size/--model_kwargs) and writes it in our layout
(.safetensors, or a torch file for any other suffix).
--to=official: reads one of our checkpoints, checks it the same way and writes the official layout,
as {"model": state_dict} for a torch file (what the official loaders read) or plain .safetensors.

Any mismatch (missing/unexpected keys, shapes) is reported in full, with exit code 2. Official
training checkpoints may also pickle their config object, which the safe loader refuses; read such
a file only if you trust it, with --trust_pickle.
"""
import json
import sys

from absl import flags

from py.training.paths import caller_path

FLAGS = flags.FlagValues()  # our own flag set: no clash with other tools' --model in one process
flags.DEFINE_string("model", None, "registered model name (py.models.list_models())", flag_values=FLAGS)
flags.DEFINE_string("input", None, "checkpoint to convert (.pth/.pt torch file or .safetensors)", flag_values=FLAGS)
flags.DEFINE_string("output", None, "where to write the converted weights (.safetensors or a torch file)",
                    flag_values=FLAGS)
flags.DEFINE_enum("to", "ours", ["ours", "official"], "direction: official -> ours, or ours -> official",
                  flag_values=FLAGS)
flags.DEFINE_enum("weights", "model", ["model", "ema"],
                  "which weights of the checkpoint: model (the trained weights; an official file's 'model' "
                  "or 'state_dict') or ema (its 'model_ema', or a trainer run's ema.safetensors)",
                  flag_values=FLAGS)
flags.DEFINE_bool("trust_pickle", False, "allow unpickling a torch file that the safe loader refuses "
                  "(pickles can run code: only for files you trust)", flag_values=FLAGS)
flags.DEFINE_integer("num_classes", None, "classifier size of the checkpoint (default: the model's own, "
                     "1000 for the ImageNet models)", flag_values=FLAGS)
flags.DEFINE_integer("img_size", None, "input resolution the checkpoint was trained at (Vim/DyVM position "
                     "embeddings depend on it; default: the model's own, 224 for the ImageNet models)",
                     flag_values=FLAGS)
flags.DEFINE_string("model_kwargs", "{}", "JSON dict of model config overrides, e.g. "
                    "'{\"num_heads\": [3, 6, 12, 24]}'", flag_values=FLAGS)


class UsageError(Exception):
    """A bad flag, path or checkpoint: one line (or one report) on stderr, exit code 2."""


def parse_flags(flag_values, argv, doc):
    """Parses argv into flag_values; returns an exit code for --help (0) or bad flags (2), else None."""
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(doc.strip() + "\n\nflags:\n" + flag_values.get_help())
        return 0
    try:
        rest = flag_values(argv)
    except flags.Error as exc:
        print(f"error: {exc} (see --help)", file=sys.stderr)
        return 2
    if len(rest) > 1:
        print(f"error: unexpected arguments {rest[1:]} (flags are --name=value; see --help)", file=sys.stderr)
        return 2
    return None


def build_model(name, num_classes, img_size, model_kwargs_json):
    """create_model(name, ...) with the JSON overrides (None: the model's default num_classes /
    img_size); bad names/overrides raise UsageError."""
    import py.models as models
    try:
        kwargs = json.loads(model_kwargs_json)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--model_kwargs is not valid JSON: {exc}")
    if not isinstance(kwargs, dict):
        raise UsageError("--model_kwargs must be a JSON object")
    if name not in models.list_models():
        raise UsageError(f"unknown --model {name!r}; known: {', '.join(models.list_models())}")
    try:
        return models.create_model(name, num_classes=num_classes, img_size=img_size, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"cannot build --model={name} with {kwargs}: {exc}")


def convert(name, input_path, output_path, to="ours", weights="model", trust_pickle=False, num_classes=None,
            img_size=None, model_kwargs="{}"):
    """Converts input_path to output_path (see the module doc). Returns the written state dict."""
    from py.models import interop
    from py.models import weights as weights_path
    model = build_model(name, num_classes, img_size, model_kwargs)
    _, state = weights_path.read(input_path, trust_pickle=trust_pickle).select(weights)
    weights_path.check_finite(state, str(input_path))
    cfg = model.default_cfg
    what = (f"--model={name} (num_classes={cfg['num_classes']}, img_size={tuple(cfg['input_size'][1:])}, "
            f"model_kwargs={model_kwargs})")
    if to == "ours":
        out = interop.to_ours(model, state)
        interop.check_state_dict(model, out, what=what)
        interop.save_state_dict(out, output_path)
    else:
        interop.check_state_dict(model, state, what=what)  # must already be ours: no conversion here
        out = interop.to_official(state, interop.family_of(model))
        interop.save_state_dict(out, output_path, wrap_key="model")
    return out


def main(argv):
    code = parse_flags(FLAGS, argv, __doc__)
    if code is not None:
        return code
    try:
        for name in ("model", "input", "output"):
            if not FLAGS[name].value:
                raise UsageError(f"--{name} is required (see --help)")
        out = convert(FLAGS.model, caller_path(FLAGS.input), caller_path(FLAGS.output), FLAGS.to, FLAGS.weights,
                      FLAGS.trust_pickle, FLAGS.num_classes, FLAGS.img_size, FLAGS.model_kwargs)
    except (UsageError, FileNotFoundError, ValueError) as exc:  # CheckpointMismatch is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(out)} tensors ({FLAGS.to} layout) to {caller_path(FLAGS.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
