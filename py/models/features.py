"""timm's intermediate-features contract, shared by every family.

Each model implements, as timm's own models do:
    forward_intermediates(x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
                          intermediates_only=False) -> intermediates | (final features, intermediates)
    prune_intermediate_layers(indices=1, prune_norm=False, prune_head=True) -> kept indices
    feature_info: timm's FeatureInfo (channels(), reduction(), module_name() of the taps)
    set_grad_checkpointing(enable=True)
and `features_only=True, out_indices=...` builds the model whose forward returns
forward_intermediates(x, out_indices, intermediates_only=True) (plus the family's own per-tap norms,
e.g. VMamba's and PVMamba's `outnorm{i}`, so their official backbone checkpoints load).

`indices`: None = every tap, an int n = the last n, a sequence = those taps (negative from the end).
"""
import torch
from timm.models._features import FeatureInfo, feature_take_indices

__all__ = ["FeatureInfo", "feature_take_indices", "take_indices", "check_output_fmt", "nchw_to",
           "checkpointed", "layer_ids", "stage_layer_ids"]


def take_indices(num_taps, indices):
    """(sorted absolute tap indices, max index); a ValueError names the valid range."""
    try:
        take, max_index = feature_take_indices(num_taps, indices)
    except AssertionError as exc:  # timm asserts; callers expect a ValueError naming the range
        raise ValueError(f"indices {indices!r}: {exc} (the model has {num_taps} taps)") from None
    return take, max_index


def check_output_fmt(output_fmt, allowed):
    if output_fmt not in allowed:
        raise ValueError(f"output_fmt must be one of {allowed}, got {output_fmt!r}")


def nchw_to(x, output_fmt):
    """An NCHW map in `output_fmt` ("NCHW" or "NHWC")."""
    return x if output_fmt == "NCHW" else x.permute(0, 2, 3, 1)


def checkpointed(fn, *args, enabled=True):
    """fn(*args), recomputed in the backward (activation checkpointing) when enabled and grads flow."""
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def stage_layer_ids(model, stem=("patch_embed",)):
    """{parameter name: layer id} of a hierarchical model whose `layers` are stages with `blocks`
    (VMamba, PVMamba), for layer-wise lr decay: the stem 0, the blocks numbered 1, 2, ... across the
    stages in order, a stage's downsample with the first block of the next stage (it feeds that
    block), anything else (final norm, head) last = total blocks + 1."""
    depths = [len(stage.blocks) for stage in model.layers]
    last = sum(depths) + 1
    ids = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if parts[0] in stem:
            ids[name] = 0
        elif parts[0] == "layers":
            s = int(parts[1])
            first = 1 + sum(depths[:s])
            ids[name] = first + int(parts[3]) if parts[2] == "blocks" else first + depths[s]
            ids[name] = min(ids[name], last)
        else:
            ids[name] = last
    return ids


def layer_ids(model):
    """(ids, num_layers): {parameter name: layer id} from the family's `layer_ids()` (embeddings 0,
    its layers in order, head last = num_layers - 1) for layer-wise lr decay, checked to cover every
    parameter, the embeddings at 0. A model without `layer_ids` is a TypeError."""
    fn = getattr(model, "layer_ids", None)
    if fn is None:
        raise TypeError(f"{type(model).__name__} has no layer_ids(): layer-wise lr decay needs the family's "
                        "layer numbering (py/models)")
    ids = fn()
    names = [n for n, _ in model.named_parameters()]
    missing = [n for n in names if n not in ids]
    if missing:
        raise ValueError(f"{type(model).__name__}.layer_ids() misses parameters {missing[:5]}")
    num_layers = max(ids.values()) + 1
    if min(ids.values()) != 0:
        raise ValueError(f"{type(model).__name__}.layer_ids(): the embeddings must be layer 0")
    return ids, num_layers
