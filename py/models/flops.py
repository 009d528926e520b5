"""FLOP counter with fvcore's conventions: `count_flops(model, input_size, batch_size)`.

Convention (fvcore's `FlopCountAnalysis` defaults, which the published VMamba / PVMamba numbers use):
* 1 multiply-add = 1 FLOP. Only the ops below are counted; element-wise ops (add, mul, activations,
  softmax, exp, softplus), pooling other than adaptive_avg_pool2d, data movement (permute, flip, cat,
  cross-scan/merge) and reductions (mean, sum) count 0.
* conv (any dim, grouped/depthwise/transposed): N * prod(weight.shape) * prod(output spatial)
  (input spatial for transposed conv); the bias is not counted.
* linear: prod(input.shape) * out_features; addmm / mm: n*k*m; bmm: b*n*k*m.
* matmul: fvcore's formula prod(a.shape) * b.shape[-1] (1-D operands promoted as torch does). Note that,
  like fvcore, this does not multiply by batch dimensions that only the second operand has, e.g.
  (B, 1, N, L) @ (B, h, L, P) counts B*N*L*P. This reproduces published fvcore numbers (PVMamba).
* einsum: the "optimized FLOP count" of numpy.einsum_path(optimize="optimal") / 2, as fvcore.
* layer_norm / group_norm / instance_norm, and batch_norm in training mode: 5 * numel (4 without affine);
  batch_norm in eval mode: 2 * numel (1 without affine).
* adaptive_avg_pool2d: numel of the input; upsample_nearest2d: numel of the output; upsample_bilinear2d and
  grid_sampler (bilinear): 4 * numel of the output.
* scaled_dot_product_attention (no fvcore handle; fvcore would count 0): counted as the two matmuls of the
  explicit form, B*h*Lq*Lk*(E + Ev), so fused and explicit attention give the same number.
* Ops in py.ops report their own formula through `py.ops._common.op_scope` (recorded once per call in
  `flop_recording()`); every aten op executed inside such an op is skipped. Their conventions (they are
  documented where each op calls op_scope):
    selective_scan u (B, D, L), A (D, N): 9*B*L*D*N (+ B*D*L with the D skip) (+ B*D*L with z)
      (state-spaces/mamba #110, as VMamba's `flops_selective_scan_fn`);
    ssd causal, x (b, L, h, p), B (b, L, g, n): the same rule over the h*p scanned channels,
      9*b*L*h*p*n (+ b*L*h*p with D) (+ b*L*h*p with z) -- independent of chunk_size;
    ssd non-causal: the two products KV = B^T (w x) and C KV, 2*b*L*h*p*n (+ b*L*h*p with D)
      (+ b*L*h*p with z);
    dcnv4 output (N, Ho, Wo, G*Cg), K = kh*kw - remove_center points: 5*N*Ho*Wo*G*Cg*K (4 MACs of
      bilinear sampling + 1 of modulation per point and channel, InternImage's DCNv3 convention);
    cross_scan / cross_merge: 0 (data movement).

Implementation: a TorchDispatchMode sees the aten ops (conv, mm, addmm, bmm, norms, upsample, grid
sampler); a TorchFunctionMode sees the few composite calls whose aten decomposition would lose fvcore's
view of them (linear, matmul, einsum, adaptive_avg_pool2d -- which becomes `mean` for output 1x1 -- and
scaled_dot_product_attention); while such a call runs the aten ops it decomposes into are not counted.
The model runs once in eval mode under torch.no_grad() (its training flag is restored afterwards).
"""
import functools
import math
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from py.ops._common import flop_recording

__all__ = ["count_flops"]

aten = torch.ops.aten


def _numel(t):
    return math.prod(t.shape)


# ----------------------------------------------------------------------------------------------
# aten-level rules: func.overloadpacket -> (name, flops(args, kwargs, out))
# ----------------------------------------------------------------------------------------------
def _conv_flops(args, kwargs, out):
    x, weight = args[0], args[1]
    transposed = args[6] if len(args) > 6 else kwargs.get("transposed", False)
    spatial = x.shape[2:] if transposed else out.shape[2:]
    return x.shape[0] * _numel(weight) * math.prod(spatial)


def _mm_flops(args, kwargs, out):
    a, b = args[-2], args[-1]  # mm(a, b) and addmm(bias, a, b)
    return a.shape[0] * a.shape[1] * b.shape[1]


def _addmm_flops(args, kwargs, out):
    return _mm_flops(args[:3], kwargs, out)


def _bmm_flops(args, kwargs, out):
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _affine_norm_flops(input_index, weight_index):
    def flops(args, kwargs, out):
        weight = args[weight_index] if len(args) > weight_index else None
        return _numel(args[input_index]) * (5 if weight is not None else 4)
    return flops


def _bn_flops(x, weight, training):
    if training:
        return _numel(x) * (5 if weight is not None else 4)
    return _numel(x) * (2 if weight is not None else 1)


def _batch_norm_flops(training_index):
    """(input, weight, bias, running_mean, running_var, training, ...); None: always eval."""
    def flops(args, kwargs, out):
        return _bn_flops(args[0], args[1], training_index is not None and args[training_index])
    return flops


def _batch_norm_legit_flops(args, kwargs, out):
    # default overload: (input, weight, bias, running_mean, running_var, training, momentum, eps);
    # no_stats overload: (input, weight, bias, training, momentum, eps)
    training = args[5] if len(args) >= 8 else args[3]
    return _bn_flops(args[0], args[1], training)


def _output_flops(scale):
    def flops(args, kwargs, out):
        return scale * _numel(out)
    return flops


_ATEN_RULES = {
    aten.convolution: ("conv", _conv_flops),
    aten._convolution: ("conv", _conv_flops),
    aten.mm: ("mm", _mm_flops),
    aten.addmm: ("addmm", _addmm_flops),
    aten._addmm_activation: ("addmm", _addmm_flops),
    aten.bmm: ("bmm", _bmm_flops),
    aten.native_layer_norm: ("layer_norm", _affine_norm_flops(0, 2)),
    aten.native_group_norm: ("group_norm", _affine_norm_flops(0, 1)),
    aten.native_batch_norm: ("batch_norm", _batch_norm_flops(5)),
    aten._native_batch_norm_legit: ("batch_norm", _batch_norm_legit_flops),
    aten._native_batch_norm_legit_no_training: ("batch_norm", _batch_norm_flops(None)),
    aten.cudnn_batch_norm: ("batch_norm", _batch_norm_flops(5)),
    aten.miopen_batch_norm: ("batch_norm", _batch_norm_flops(5)),
    aten.upsample_nearest2d: ("upsample_nearest2d", _output_flops(1)),
    aten.upsample_bilinear2d: ("upsample_bilinear2d", _output_flops(4)),
    aten.grid_sampler_2d: ("grid_sampler", _output_flops(4)),
    aten.grid_sampler_3d: ("grid_sampler", _output_flops(4)),
    aten.cudnn_grid_sampler: ("grid_sampler", _output_flops(4)),
}


# ----------------------------------------------------------------------------------------------
# function-level rules: torch function -> (name, flops(args, kwargs))
# ----------------------------------------------------------------------------------------------
def _arg(args, kwargs, index, name):
    return args[index] if len(args) > index else kwargs[name]


def _linear_flops(args, kwargs):
    x, weight = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    out_features = weight.shape[0] if weight.dim() == 2 else 1
    return _numel(x) * out_features


def _matmul_shapes_flops(a_shape, b_shape):
    a_shape, b_shape = list(a_shape), list(b_shape)
    if len(a_shape) == 1:
        a_shape = [1] + a_shape
    if len(b_shape) == 1:
        b_shape = b_shape + [1]
    return math.prod(a_shape) * b_shape[-1]


def _matmul_flops(args, kwargs):
    return _matmul_shapes_flops(_arg(args, kwargs, 0, "input").shape, _arg(args, kwargs, 1, "other").shape)


def _rmatmul_flops(args, kwargs):
    return _matmul_shapes_flops(args[1].shape, args[0].shape)  # Tensor.__rmatmul__(self, other) = other @ self


@functools.lru_cache(maxsize=1024)
def _einsum_path_flops(equation, shapes):
    operands = [np.broadcast_to(np.zeros((), dtype=np.float64), s) for s in shapes]
    report = np.einsum_path(equation, *operands, optimize="optimal")[1]
    for line in report.split("\n"):
        if "optimized flop" in line.lower():
            return int(math.floor(float(line.split(":")[-1]) / 2))
    raise NotImplementedError(f"cannot count einsum {equation!r}")


def _einsum_flops(args, kwargs):
    equation, operands = args[0], args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    if not isinstance(equation, str) or not all(isinstance(t, torch.Tensor) for t in operands):
        raise NotImplementedError("count_flops supports torch.einsum(equation, *tensors) only")
    return _einsum_path_flops(equation.replace(" ", ""), tuple(tuple(t.shape) for t in operands))


def _adaptive_avg_pool2d_flops(args, kwargs):
    return _numel(_arg(args, kwargs, 0, "input"))


def _sdpa_flops(args, kwargs):
    q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    batch = math.prod(q.shape[:-2])
    return batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])


_FUNCTION_RULES = {
    F.linear: ("linear", _linear_flops),
    torch.matmul: ("matmul", _matmul_flops),
    torch.Tensor.matmul: ("matmul", _matmul_flops),
    torch.Tensor.__matmul__: ("matmul", _matmul_flops),
    torch.Tensor.__rmatmul__: ("matmul", _rmatmul_flops),
    torch.einsum: ("einsum", _einsum_flops),
    F.adaptive_avg_pool2d: ("adaptive_avg_pool2d", _adaptive_avg_pool2d_flops),
    torch._C._nn.adaptive_avg_pool2d: ("adaptive_avg_pool2d", _adaptive_avg_pool2d_flops),
    F.scaled_dot_product_attention: ("scaled_dot_product_attention", _sdpa_flops),
}


# ----------------------------------------------------------------------------------------------
# The two modes
# ----------------------------------------------------------------------------------------------
class _CountState:
    def __init__(self, recorder):
        self.recorder = recorder  # py.ops' FlopRecorder: ops record their own formula there
        self.by_op = Counter()
        self.claimed = 0  # > 0 while a function-level rule's call runs: its aten ops are not counted

    def counting(self):
        return self.recorder.inside_op == 0 and self.claimed == 0


class _FunctionCounter(TorchFunctionMode):
    def __init__(self, state):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = _FUNCTION_RULES.get(func)
        if rule is None or not self.state.counting():
            return func(*args, **kwargs)
        name, flops = rule
        self.state.by_op[name] += int(flops(args, kwargs))
        self.state.claimed += 1
        try:
            return func(*args, **kwargs)
        finally:
            self.state.claimed -= 1


class _AtenCounter(TorchDispatchMode):
    def __init__(self, state):
        super().__init__()
        self.state = state

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = _ATEN_RULES.get(func.overloadpacket)
        if rule is not None and self.state.counting():
            name, flops = rule
            self.state.by_op[name] += int(flops(args, kwargs, out[0] if isinstance(out, tuple) else out))
        return out


def count_flops(model, input_size=(3, 224, 224), batch_size=1, inputs=None):
    """Counts the forward FLOPs of `model` (fvcore convention, see the module docstring).

    model: an nn.Module taking one image batch. input_size: (C, H, W) of the random input.
    batch_size: its batch size. inputs: optional tensor used instead of the random input (for models
        whose cost depends on the data, e.g. token pruning).
    Returns {"total": int FLOPs, "by_op": {op name: FLOPs} (largest first; ops of py.ops under their own
    names), "params": number of parameters}.
    """
    param = next(model.parameters(), None)
    if inputs is None:
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
        inputs = torch.randn((batch_size, *input_size), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with flop_recording() as recorder, torch.no_grad():
            state = _CountState(recorder)
            with _FunctionCounter(state), _AtenCounter(state):
                model(inputs)
    finally:
        model.train(was_training)
    by_op = Counter(state.by_op)
    by_op.update(recorder.by_op)
    by_op = {k: int(v) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1]) if v}
    return {"total": sum(by_op.values()), "by_op": by_op,
            "params": sum(p.numel() for p in model.parameters())}
