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
           "checkpointed"]


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
