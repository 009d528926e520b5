"""Observing op calls: the public, documented way to see what the models hand to the ops.

    from py.ops import observe
    calls = []
    with observe(calls.append):          # any callable taking an OpCall
        model(images)
    calls[0].op, calls[0].args["delta"], calls[0].output

Every public op (selective_scan, ssd, dcnv4, cross_scan, cross_merge) reports each call made while
an observer is active: its name, its arguments bound to their parameter names (defaults filled in)
and its output, after the op has run. Nothing is reported while torch.compile/torch.export trace, and
nothing costs anything while no observer is active. Observers nest; the innermost runs last.
"""
import contextlib
import dataclasses
import functools
import inspect
from typing import Any, Callable, Dict

import torch

__all__ = ["OpCall", "observe", "observable"]

_OBSERVERS = []


@dataclasses.dataclass
class OpCall:
    op: str                 # the op's public name, e.g. "selective_scan"
    args: Dict[str, Any]    # every parameter by name (tensors as passed, not copied)
    output: Any             # what the op returned


@contextlib.contextmanager
def observe(callback: Callable[[OpCall], None]):
    """Hands every op call made inside the block to `callback(OpCall)`."""
    _OBSERVERS.append(callback)
    try:
        yield callback
    finally:
        _OBSERVERS.remove(callback)


def _tracing():
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def observable(op):
    """Decorator for a public op function: reports its calls to the active observers."""
    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def op_fn(*args, **kwargs):
            out = fn(*args, **kwargs)
            if _OBSERVERS and not _tracing():
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                call = OpCall(op, dict(bound.arguments), out)
                for callback in list(_OBSERVERS):
                    callback(call)
            return out
        return op_fn
    return wrap
