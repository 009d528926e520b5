"""Checkpoint interop with the official repositories: their state dicts <-> ours.

    state = weights.read("vssm_tiny.pth").select("model")[1]   # reading is py.models.weights' job
    interop.load_official(model, state)                         # converts, validates, loads strictly
    official = interop.to_official(model)                       # our weights in the official layout

Our models were written from the same specs as the official code and keep its module names, so
most keys are identical. What differs is data, per family; each family module registers its rules
next to its model (register_family), so this module imports no family:
  * key rules: renames, written as templates ("score_predictors.{rest}" <-> "score_predictor.{rest}");
    each works both ways.
  * tensor rules: reshapes of tensors whose stored layout differs from ours, matched on our key.

Verified (py/models/tests/test_interop.py builds official key/shape lists from the specs and the
official sources) to be the identity apart from these rules:
  vmamba  MzeroMiko/VMamba `VSSM` v2 configs (channel-first "ln2d", forward types v05[_noz] and
          m0[_noz]): patch_embed.{0,2,5,7}, layers.i.blocks.j.{norm,op,norm2,mlp},
          layers.i.downsample.{1,3}, classifier.{norm,head}; SS2D x_proj_weight (K, R+2N, Di),
          dt_projs_weight (K, Di, R), dt_projs_bias (K, Di), A_logs (K*Di, N), Ds (K*Di,)
          (m0: A_logs (K, R), Ds (K, R, P), dt_projs_bias (K, R)). Backbone_VSSM's outnorm{i} too.
  vim     hustvl/Vim `VisionMamba` (midclstok, bimamba v2): patch_embed.proj, cls_token, pos_embed,
          layers.i.{norm, mixer.{in_proj, conv1d[_b], x_proj[_b], dt_proj[_b], A_log, A_b_log, D,
          D_b, out_proj}}, norm_f, head.
  dyvm    NUS-HPC-AI-Lab/DyVM `DyVM` = vim + layers.i.mixer.block_head + score_predictors (ours:
          score_predictor).
  pvmamba phiphiphi31/PVMamba `PVMAMBA` (and Backbone_PVMAMBA's outnorm{i}).
Not convertible (our models have no such architecture): vanilla VMamba v0/v1 (forward type v0,
PatchMerging2D downsample), VMamba "xv*" types, VideoMamba, MambaReg.
"""
import dataclasses
import pathlib
import re
from collections import OrderedDict
from typing import Callable, Optional

import torch

__all__ = ["CheckpointMismatch", "FAMILIES", "KeyRule", "TensorRule", "family_of", "register_family",
           "strip_prefixes", "to_ours", "to_official", "check_state_dict", "load_official", "save_state_dict"]

PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers


# ----------------------------------------------------------------------------------------------
# The mapping tables
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KeyRule:
    """A rename between an official key and ours; `{name}` fields match any text and carry over."""
    official: str
    ours: str
    why: str


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """A layout change for keys matching `ours` (a regex on our key).

    to_ours(tensor, expected_shape) returns the tensor in our layout, or None if it does not apply
    (the shape check then reports the mismatch); to_official(tensor) the reverse (None: as is).
    """
    ours: str
    to_ours: Callable
    to_official: Optional[Callable]
    why: str


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family's conversion rules, registered by its own module (register_family)."""
    cls: type
    key_rules: tuple = ()
    tensor_rules: tuple = ()
    hints: tuple = ()  # (regex on a reported key, advice appended to a mismatch error)


FAMILIES = {}  # name -> Family, filled as the family modules are imported (py.models imports all)


def register_family(name, cls, key_rules=(), tensor_rules=(), hints=()):
    """Called by each family module next to its model class: its renames, reshapes and hints."""
    if name in FAMILIES and FAMILIES[name].cls is not cls:
        raise ValueError(f"model family {name!r} is registered twice")
    FAMILIES[name] = Family(cls, tuple(key_rules), tuple(tensor_rules), tuple(hints))


def _rules(family, kind):
    entry = FAMILIES.get(family)
    return getattr(entry, kind) if entry is not None else ()


_ANY = (
    (r"(^|\.)head\.(weight|bias)$",
     "the classifier size differs: build the model with the checkpoint's num_classes"),
    (r"(^|\.)pos_embed$", "the position embedding is for another image size: build with its img_size"),
)


def _template_regex(template):
    parts = re.split(r"\{(\w+)\}", template)
    out = []
    for i, part in enumerate(parts):
        out.append(f"(?P<{part}>.+?)" if i % 2 else re.escape(part))
    return re.compile("^" + "".join(out) + "$")


def _rename(key, rules, src, dst):
    for rule in rules:
        m = _template_regex(getattr(rule, src)).match(key)
        if m:
            return getattr(rule, dst).format(**m.groupdict())
    return key


# ----------------------------------------------------------------------------------------------
# Families and prefixes
# ----------------------------------------------------------------------------------------------
def family_of(model_or_name, default=ValueError):
    """The registered family name ("vmamba", "vim", "dyvm", "pvmamba", ...) of one of our models
    (instance or registered name); for anything else `default` if given, else ValueError."""
    if isinstance(model_or_name, str):
        family = model_or_name.split("_")[0]
        if family in FAMILIES:
            return family
        what = f"model {model_or_name!r}; expected a name starting with one of {tuple(FAMILIES)}"
    else:
        matches = [(name, f.cls) for name, f in FAMILIES.items() if isinstance(model_or_name, f.cls)]
        for name, cls in matches:  # the most derived class wins (DyVM subclasses Vim)
            if all(issubclass(cls, other) for _, other in matches):
                return name
        what = f"{type(model_or_name).__name__}: not one of our model families {tuple(FAMILIES)}"
    if default is not ValueError:
        return default
    raise ValueError(f"cannot tell the family of {what}")


def strip_prefixes(state, prefixes=PREFIXES):
    """Drops wrapper prefixes ("module." from DDP, "_orig_mod." from torch.compile) from every key."""
    out = OrderedDict()
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        if key in out:
            raise ValueError(f"checkpoint has key {key!r} twice once wrapper prefixes {prefixes} are removed")
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------
def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def to_ours(model, state, family=None):
    """An official (or already ours) state dict in our layout for `model`: prefixes stripped, keys
    renamed, tensors reshaped. Keys of ours pass unchanged, so this is safe on either kind.
    Does not validate: see check_state_dict / load_official. Models of other families only get the
    prefixes stripped."""
    family = family or family_of(model, default=None)
    expected = _shapes(model)
    out = OrderedDict()
    for key, value in strip_prefixes(state).items():
        key = _rename(key, _rules(family, "key_rules"), "official", "ours")
        want = expected.get(key)
        if want is not None and tuple(value.shape) != want:
            for rule in _rules(family, "tensor_rules"):
                if re.search(rule.ours, key):
                    converted = rule.to_ours(value, want)
                    if converted is not None:
                        value = converted
                        break
        if key in out:
            raise ValueError(f"two checkpoint keys map to our key {key!r}")
        out[key] = value
    return out


def to_official(model_or_state, family=None):
    """Our weights (a model or its state dict) as an official state dict (keys renamed, tensors in
    the official layout; the current upstream layout where upstream changed over time)."""
    if isinstance(model_or_state, torch.nn.Module):
        family = family or family_of(model_or_state)
        state = model_or_state.state_dict()
    else:
        state = model_or_state
        if family is None:
            raise ValueError(f"to_official(state_dict) needs family= (one of {tuple(FAMILIES)})")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {tuple(FAMILIES)}")
    out = OrderedDict()
    for key, value in state.items():
        for rule in _rules(family, "tensor_rules"):
            if rule.to_official is not None and re.search(rule.ours, key):
                value = rule.to_official(value)
                break
        out[_rename(key, _rules(family, "key_rules"), "ours", "official")] = value
    return out


class CheckpointMismatch(ValueError):
    """A converted state dict does not fit the model; the message lists every problem."""

    def __init__(self, what, missing, unexpected, mismatched, hints=()):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"checkpoint does not match {what}: {len(missing)} missing, {len(unexpected)} unexpected, "
                 f"{len(mismatched)} with another shape"]
        if missing:
            lines.append("  missing (in the model, not in the checkpoint): " + _listing(missing))
        if unexpected:
            lines.append("  unexpected (in the checkpoint, not in the model): " + _listing(unexpected))
        for name, want, got in mismatched[:30]:
            lines.append(f"  shape mismatch: {name}: expected {want}, got {got}")
        if len(mismatched) > 30:
            lines.append(f"  ... and {len(mismatched) - 30} more shape mismatches")
        lines += [f"  hint: {h}" for h in hints]
        super().__init__("\n".join(lines))


def _listing(keys, limit=30):
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict(model, state, family=None, what=None):
    """Raises CheckpointMismatch unless `state` (our layout) has exactly the model's keys and shapes.

    A missing BatchNorm `num_batches_tracked` is allowed (PyTorch fills it in)."""
    family = family or family_of(model, default=None)
    expected = _shapes(model)
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [(k, expected[k], tuple(v.shape)) for k, v in state.items()
                  if k in expected and tuple(v.shape) != expected[k]]
    if missing or unexpected or mismatched:
        reported = missing + unexpected + [m[0] for m in mismatched]
        hints = [text for pattern, text in _rules(family, "hints") + _ANY
                 if any(re.search(pattern, k) for k in reported)]
        raise CheckpointMismatch(what or type(model).__name__, missing, unexpected, mismatched, hints)


def load_official(model, state, family=None, what=None):
    """Converts an official (or our) state dict and loads it strictly into `model`."""
    converted = to_ours(model, state, family)
    check_state_dict(model, converted, family, what)
    model.load_state_dict(converted, strict=True)
    return model


def save_state_dict(state, path, wrap_key=None):
    """Writes a state dict: .safetensors (tensors only), else a torch file, optionally wrapped as
    {wrap_key: state} (the official repos load checkpoint["model"])."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (e.g. tied or viewed parameters)
    tensors = OrderedDict((k, v.detach().cpu().contiguous().clone()) for k, v in state.items())
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(tensors, str(path))
    else:
        torch.save({wrap_key: tensors} if wrap_key else tensors, str(path))
    return path
