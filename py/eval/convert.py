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
import sys

from absl import flags

from py.common import cli
from py.eval import common

FLAGS = flags.FlagValues()  # our own flag set: no clash with other tools' --model in one process
cli.define_model_flags(FLAGS, checkpoint="input", checkpoint_help="checkpoint to convert (.pth/.pt torch file "
                       "or .safetensors, official or ours)")
flags.DEFINE_string("output", None, "where to write the converted weights (.safetensors or a torch file)",
                    flag_values=FLAGS)
flags.DEFINE_enum("to", "ours", ["ours", "official"], "direction: official -> ours, or ours -> official",
                  flag_values=FLAGS)
flags.DEFINE_integer("num_classes", None, "classifier size of the checkpoint (default: the model's own, "
                     "1000 for the ImageNet models)", flag_values=FLAGS)
flags.DEFINE_integer("img_size", None, "input resolution the checkpoint was trained at (Vim/DyVM position "
                     "embeddings depend on it; default: the model's own, 224 for the ImageNet models)",
                     flag_values=FLAGS)


def convert(name, input_path, output_path, to="ours", weights="model", trust_pickle=False, num_classes=None,
            img_size=None, model_kwargs=None):
    """Converts input_path to output_path (see the module doc). Returns the written state dict."""
    from py.models import interop
    from py.models import weights as weights_path
    model = common.build_model(name, num_classes, img_size, None, model_kwargs)
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
    def run():
        for name in ("model", "input", "output"):
            if not FLAGS[name].value:
                raise cli.UsageError(f"--{name} is required (see --help)")
        out = convert(FLAGS.model, common.caller_path(FLAGS.input), common.caller_path(FLAGS.output), FLAGS.to,
                      FLAGS.weights, FLAGS.trust_pickle, FLAGS.num_classes, FLAGS.img_size, FLAGS.model_kwargs)
        print(f"wrote {len(out)} tensors ({FLAGS.to} layout) to {common.caller_path(FLAGS.output)}")

    from py.models.interop import CheckpointMismatch
    return cli.run(run, argv, FLAGS, __doc__, errors=(CheckpointMismatch,))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
