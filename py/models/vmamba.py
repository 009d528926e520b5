"""VMamba v2: Visual State Space Model (Liu et al., arXiv 2401.10166), channel-first.

Spec: /work/shared/specs/vmamba_kernels.md §1 (model), §3 (cross-scan), §4 (SSD).

Layout of the network (spec §1.1), for input (B, 3, H, W) and C = dims[0]:

    stem "v2": Conv3x3/s2 (3 -> C/2) -> LN2d -> GELU -> Conv3x3/s2 (C/2 -> C) -> LN2d   (H/4 x W/4)
    4 stages of VSSBlocks at C, 2C, 4C, 8C; after stages 0..2 a "v3" downsample Conv3x3/s2 -> LN2d
    classifier: LN2d -> global average pool -> Linear(8C -> num_classes)

VSSBlock (spec §1.2): x = x + DropPath(SS2D(LN(x))); x = x + DropPath(MLP(LN(x))).

SS2D, forward type "v05[_noz]" (spec §1.3): in_proj (1x1) -> depthwise 3x3 conv -> SiLU -> cross-scan
into K = 4 directions -> per-direction x_proj (grouped 1x1 conv1d: dt_low R, B N, C N) -> per-direction
dt_proj (grouped conv1d) -> selective scan with K groups (B/C shared by the Di channels of a direction,
delta_bias, softplus, D skip) -> cross-merge -> LN -> out_proj. Without "_noz" in_proj also emits a z
branch and y is gated by SiLU(z).

SS2D, forward type "m0[_noz]" (spec §1.8, the Mamba-2 / SSD variant): the same projections, but
dt_rank R is the number of heads per direction (headdim P = Di / R), x_proj emits one dt per head, A is
a scalar per head, D is per (head, channel), there is no dt_proj weight, and the scan is the chunked SSD
(py.ops.ssd, causal, ngroups = K = 4 so each direction's heads share that direction's B/C).

Everything runs NCHW: every Linear is `Linear2d` (an nn.Linear whose forward is a 1x1 conv, so state
dicts match the channel-last layout) and every LayerNorm is a LayerNorm2d over channels (eps 1e-5, as
VMamba's nn.LayerNorm subclass). Module names and parameter shapes follow upstream `VSSM` (including
the nn.Identity placeholders inside the nn.Sequential stem/downsample), so upstream channel-first
checkpoints load with the registry's exact-key loader.

Input sizes: H and W must be multiples of patch_size (the stem's total stride). Later stages follow
conv arithmetic (3x3/s2/p1 = ceil(H/2)), so e.g. 28x28 works at patch_size 4 (7, 4, 2, 1 tokens per side)
or patch_size 2 (14, 7, 4, 2); feature maps are at exact strides 4/8/16/32 when H, W are multiples of 32.

`vmamba_tiny_ssd` (our name for upstream's `vmamba_tiny_m2`) keeps upstream's config (dims 96, depths
2-2-4-2, d_state 64, ssm_ratio 1, dt_rank "auto" = 6 heads per direction of headdim 16, GELU after the
dwconv, init "v2", forward type "m0_noz", SSD chunk 64, MLP ratio 4, drop_path 0.2) but runs channel-first
with LN2d like the other VMamba-v2 models; that is mathematically the same network as upstream's
channel-last "ln" build (same parameter shapes). Upstream published no checkpoint or accuracy for it.
"""
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, LayerNorm2d, trunc_normal_

from py.models import interop
from py.models.features import FeatureInfo, check_output_fmt, nchw_to, stage_layer_ids, take_indices
from py.models.registry import imagenet_cfg, register_model
from py.ops.cross_scan import cross_merge, cross_scan
from py.ops.selective_scan import selective_scan
from py.ops.ssd import ssd

__all__ = ["VMamba", "VSSBlock", "SS2D", "SS2DMamba2", "Linear2d", "MODEL_CFGS"]

_ACT_LAYERS = dict(silu=nn.SiLU, gelu=nn.GELU, relu=nn.ReLU, sigmoid=nn.Sigmoid)
_LN_EPS = 1e-5  # VMamba's LayerNorm2d subclasses nn.LayerNorm and keeps its default eps


def _norm(num_channels):
    """LayerNorm over the channels of an NCHW map (timm's LayerNorm2d, with nn.LayerNorm's eps)."""
    return LayerNorm2d(num_channels, eps=_LN_EPS)


def _fp32(t):
    """SSM parameters enter the scan in float32 (float64 stays float64), as upstream's `.float()`."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _act_layer(name):
    if name not in _ACT_LAYERS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACT_LAYERS)}")
    return _ACT_LAYERS[name]


def _parse_forward_type(forward_type):
    """'v05_noz' -> ('v05', False): the core type and whether the z gate is kept."""
    core, *postfixes = forward_type.split("_")
    if core not in ("v05", "m0") or any(p != "noz" for p in postfixes):
        raise ValueError(f"unsupported forward_type {forward_type!r}; expected 'v05', 'v05_noz' (selective "
                         f"scan) or 'm0', 'm0_noz' (Mamba-2 SSD)")
    return core, "noz" not in postfixes


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
class Linear2d(nn.Linear):
    """nn.Linear over the channels of an NCHW map: a 1x1 conv that keeps the (out, in) Linear weight."""

    def forward(self, x):
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        if key in state_dict and state_dict[key].dim() == 4:  # accept (out, in, 1, 1) conv weights
            state_dict[key] = state_dict[key].flatten(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Mlp(nn.Module):
    """fc1 (C -> hidden) -> act -> dropout -> fc2 (hidden -> C) -> dropout, as 1x1 convs."""

    def __init__(self, dim, hidden_dim, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        self.fc1 = Linear2d(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = Linear2d(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


def _inverse_softplus_dt(shape, dt_min, dt_max, dt_init_floor):
    """Mamba's dt bias init: softplus^-1 of dt = exp(U(log dt_min, log dt_max)) clamped >= floor."""
    dt = torch.exp(torch.rand(shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


class _SS2DBase(nn.Module):
    """What both SS2D forms share: in_proj (+z), depthwise conv + act, x_proj weights, out_norm/out_proj."""

    k_group = 4

    def __init__(self, dim, d_state, ssm_ratio, dt_rank, act_layer, d_conv, conv_bias, with_z, dropout,
                 backend):
        super().__init__()
        self.d_model = dim
        self.d_state = int(d_state)
        self.d_inner = int(ssm_ratio * dim)
        self.dt_rank = int(math.ceil(dim / 16) if dt_rank == "auto" else dt_rank)
        self.with_z = with_z
        self.backend = backend
        d_inner = self.d_inner
        self.in_proj = Linear2d(dim, d_inner * (2 if with_z else 1), bias=False)
        self.act = act_layer()
        if d_conv > 1:
            self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner,
                                    bias=conv_bias)
        else:
            self.conv2d = nn.Identity()
        # x_proj: K stacked Linear(d_inner -> dt_rank + 2 * d_state, no bias), PyTorch's Linear init.
        self.x_proj_weight = nn.Parameter(torch.empty(self.k_group, self.dt_rank + 2 * self.d_state, d_inner))
        nn.init.uniform_(self.x_proj_weight, -d_inner ** -0.5, d_inner ** -0.5)
        self.out_norm = _norm(d_inner)
        self.out_proj = Linear2d(d_inner, dim, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        x = self.in_proj(x)
        if self.with_z:
            x, z = x.chunk(2, dim=1)
            z = self.act(z)
        x = self.act(self.conv2d(x))
        y = self.forward_core(x)
        if self.with_z:
            y = y * z
        return self.dropout(self.out_proj(y))

    def _project(self, xs):
        """Per-direction x_proj of the scanned sequences xs (B, K, Di, L) -> dt_low, B, C (B, K, *, L)."""
        b, k, d, length = xs.shape
        x_dbl = F.conv1d(xs.reshape(b, k * d, length), self.x_proj_weight.view(-1, d, 1), groups=k)
        return torch.split(x_dbl.view(b, k, -1, length), [self.dt_rank, self.d_state, self.d_state], dim=2)


class SS2D(_SS2DBase):
    """2-D selective scan, VMamba forward type "v05[_noz]". (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim, d_state=1, ssm_ratio=1.0, dt_rank="auto", act_layer=nn.SiLU, d_conv=3,
                 conv_bias=False, with_z=False, dropout=0.0, init="v0", dt_min=1e-3, dt_max=0.1,
                 dt_init_floor=1e-4, dt_scale=1.0, backend="auto"):
        super().__init__(dim, d_state, ssm_ratio, dt_rank, act_layer, d_conv, conv_bias, with_z, dropout,
                         backend)
        k, d, r, n = self.k_group, self.d_inner, self.dt_rank, self.d_state
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d))
        self.A_logs = nn.Parameter(torch.empty(k * d, n))
        self.Ds = nn.Parameter(torch.empty(k * d))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        with torch.no_grad():
            if init == "v0":  # Mamba init (spec §1.4), used by all released VMamba-v2 models
                bound = r ** -0.5 * dt_scale
                self.dt_projs_weight.uniform_(-bound, bound)
                self.dt_projs_bias.copy_(_inverse_softplus_dt((k, d), dt_min, dt_max, dt_init_floor))
                self.A_logs.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * d, 1))
                self.Ds.fill_(1.0)
            elif init == "v1":
                self.dt_projs_weight.normal_().mul_(0.1)
                self.dt_projs_bias.normal_().mul_(0.1)
                self.A_logs.normal_()
                self.Ds.fill_(1.0)
            elif init == "v2":
                self.dt_projs_weight.uniform_().mul_(0.1)
                self.dt_projs_bias.uniform_().mul_(0.1)
                self.A_logs.zero_()
                self.Ds.fill_(1.0)
            else:
                raise ValueError(f"unknown ssm_init {init!r}; expected 'v0', 'v1' or 'v2'")

    def forward_core(self, x):
        b, d, h, w = x.shape
        k, r = self.k_group, self.dt_rank
        xs = cross_scan(x, backend=self.backend)  # (B, K, Di, L)
        dts, bs, cs = self._project(xs)
        dts = F.conv1d(dts.reshape(b, k * r, h * w), self.dt_projs_weight.view(k * d, r, 1), groups=k)
        A, D, bias = -torch.exp(_fp32(self.A_logs)), _fp32(self.Ds), _fp32(self.dt_projs_bias).view(-1)
        from py.ops import selective_scan_cuda  # the fused CUDA op; this method is its only user here
        if selective_scan_cuda.fused_cross2d_applies(x, self.d_state, self.backend):
            # The scan reads x through the four traversals and writes the merged map (same result as
            # below): no (B, K, Di, L) copy enters the scan and no cross_merge runs.
            y = selective_scan_cuda.selective_scan_cross2d(x, dts, A, bs.contiguous(), cs.contiguous(), D=D,
                                                           delta_bias=bias, delta_softplus=True, backend=self.backend)
        else:
            ys = selective_scan(xs.reshape(b, k * d, h * w), dts, A, bs.contiguous(), cs.contiguous(), D=D,
                                delta_bias=bias, delta_softplus=True, backend=self.backend)
            y = cross_merge(ys.view(b, k, d, h, w), backend=self.backend)  # (B, Di, L)
        return self.out_norm(y.view(b, d, h, w)).to(x.dtype)


class SS2DMamba2(_SS2DBase):
    """2-D Mamba-2 (SSD) scan, VMamba forward type "m0[_noz]" (spec §1.8). (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim, d_state=64, ssm_ratio=1.0, dt_rank="auto", act_layer=nn.GELU, d_conv=3,
                 conv_bias=False, with_z=False, dropout=0.0, init="v2", chunk_size=64, backend="auto"):
        super().__init__(dim, d_state, ssm_ratio, dt_rank, act_layer, d_conv, conv_bias, with_z, dropout,
                         backend)
        k, heads = self.k_group, self.dt_rank
        if self.d_inner % heads:
            raise ValueError(f"SS2DMamba2: d_inner={self.d_inner} must be divisible by dt_rank (heads per "
                             f"direction) = {heads}")
        self.headdim = self.d_inner // heads
        self.chunk_size = int(chunk_size)
        self.Ds = nn.Parameter(torch.ones(k, heads, self.headdim))
        self.A_logs = nn.Parameter(torch.empty(k, heads))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, heads))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        with torch.no_grad():
            if init == "v2":  # upstream's init for the m0 models: A = -1, dt bias 0.1 * U(0, 1)
                self.A_logs.zero_()
                self.dt_projs_bias.uniform_().mul_(0.1)
            elif init == "v1":
                self.A_logs.normal_()
                self.dt_projs_bias.normal_().mul_(0.1)
            else:
                raise ValueError(f"unknown ssm_init {init!r} for forward type m0; expected 'v1' or 'v2'")

    def forward_core(self, x):
        b, d, h, w = x.shape
        k, heads, p, length = self.k_group, self.dt_rank, self.headdim, h * w
        xs = cross_scan(x, backend=self.backend)  # (B, K, Di, L)
        dts, bs, cs = self._project(xs)
        # Head index k * heads + r, channel r * P + p of direction k; group k = head // heads.
        u = xs.reshape(b, k, heads, p, length).permute(0, 4, 1, 2, 3).reshape(b, length, k * heads, p)
        dt = dts.permute(0, 3, 1, 2).reshape(b, length, k * heads)
        ys = ssd(u, dt, -torch.exp(_fp32(self.A_logs)).view(-1), bs.permute(0, 3, 1, 2).contiguous(),
                 cs.permute(0, 3, 1, 2).contiguous(), self.chunk_size, D=self.Ds.view(k * heads, p),
                 dt_bias=self.dt_projs_bias.view(-1), dt_softplus=True, causal=True, backend=self.backend)
        ys = ys.reshape(b, length, k, d).permute(0, 2, 3, 1).reshape(b, k, d, h, w)
        y = cross_merge(ys, backend=self.backend)  # (B, Di, L)
        return self.out_norm(y.view(b, d, h, w)).to(x.dtype)


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LN(x))), then x + DropPath(MLP(LN(x))); either branch off when its ratio is 0."""

    def __init__(self, dim, drop_path=0.0, ssm_ratio=1.0, mlp_ratio=4.0, mlp_act_layer=nn.GELU,
                 mlp_drop_rate=0.0, use_checkpoint=False, mixer_cls=SS2D, **mixer_kwargs):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.ssm_branch = ssm_ratio > 0
        self.mlp_branch = mlp_ratio > 0
        if self.ssm_branch:
            self.norm = _norm(dim)
            self.op = mixer_cls(dim, ssm_ratio=ssm_ratio, **mixer_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if self.mlp_branch:
            self.norm2 = _norm(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=mlp_act_layer, drop=mlp_drop_rate)

    def _forward(self, x):
        if self.ssm_branch:
            x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp_branch:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x

    def forward(self, x):
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
def _make_stem(version, in_chans, dim, patch_size):
    """Patch embedding to (B, dim, H/patch, W/patch), spec §1.1.1, with upstream's module indices.

    "v2": Conv(k3, s2, p1) -> LN2d -> GELU -> Conv(stride patch/2, k = stride+1, p1) -> LN2d. For
    patch_size 4 this is upstream's stem exactly; other even sizes keep the total stride = patch_size
    (a second-conv stride of 1 uses k3).
    "v1": Conv(k = s = patch_size) -> LN2d.
    """
    if version == "v1":
        return nn.Sequential(nn.Conv2d(in_chans, dim, patch_size, stride=patch_size), nn.Identity(), _norm(dim))
    if version == "v2":
        if patch_size < 2 or patch_size % 2:
            raise ValueError(f"patchembed_version 'v2' needs an even patch_size >= 2 (two strided convs), "
                             f"got {patch_size}; use patchembed_version='v1' for other sizes")
        stride2 = patch_size // 2
        kernel2 = stride2 + 1 if stride2 > 1 else 3
        return nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1), nn.Identity(), _norm(dim // 2),
            nn.Identity(), nn.GELU(),
            nn.Conv2d(dim // 2, dim, kernel2, stride=stride2, padding=1), nn.Identity(), _norm(dim))
    raise ValueError(f"unknown patchembed_version {version!r}; expected 'v1' or 'v2'")


def _make_downsample(version, dim, out_dim):
    """Between stages (spec §1.1.3): "v3" Conv(k3, s2, p1) -> LN2d; "v2" Conv(k2, s2) -> LN2d."""
    if version == "v3":
        conv = nn.Conv2d(dim, out_dim, 3, stride=2, padding=1)
    elif version == "v2":
        conv = nn.Conv2d(dim, out_dim, 2, stride=2)
    else:
        raise ValueError(f"unsupported downsample_version {version!r}; expected 'v2' or 'v3'")
    return nn.Sequential(nn.Identity(), conv, nn.Identity(), _norm(out_dim))


class VMamba(nn.Module):
    """VMamba v2 (upstream `VSSM`, channel-first) with timm's model interface.

    num_classes: classifier outputs (0: no head, forward returns pooled features).
    img_size: nominal input size (int or (H, W)); must be a multiple of patch_size. Any input whose
        H, W are multiples of patch_size runs; others raise ValueError.
    dims: stage-0 width (int, doubled per stage) or the 4 stage widths. depths: blocks per stage.
    ssm_*: SS2D settings (spec §1.3-1.6); forward_type: "v05_noz" | "v05" | "m0_noz" | "m0".
    drop_rate: dropout before the classifier head (timm's meaning).
    features_only/out_indices: forward returns forward_intermediates(x, out_indices) (the stage outputs
        before each downsample, strides 4/8/16/32, NCHW), each through its `outnorm{i}` LN2d (upstream
        `Backbone_VSSM`, whose checkpoints load: every stage is kept, no classifier).
    op_backend: backend passed to py.ops.selective_scan / py.ops.ssd ("auto", "reference", "cpu", "cuda").
    """

    def __init__(self, num_classes=1000, img_size=224, in_chans=3, patch_size=4, dims=96, depths=(2, 2, 9, 2),
                 ssm_d_state=1, ssm_ratio=1.0, ssm_dt_rank="auto", ssm_act_layer="silu", ssm_conv=3,
                 ssm_conv_bias=False, ssm_drop_rate=0.0, ssm_init="v0", forward_type="v05_noz",
                 ssd_chunk_size=64, mlp_ratio=4.0, mlp_act_layer="gelu", mlp_drop_rate=0.0,
                 drop_path_rate=0.1, drop_rate=0.0, patchembed_version="v2", downsample_version="v3",
                 use_checkpoint=False, features_only=False, out_indices=(0, 1, 2, 3), op_backend="auto"):
        super().__init__()
        depths = tuple(int(d) for d in depths)
        num_stages = len(depths)
        if isinstance(dims, int):
            dims = [dims * 2 ** i for i in range(num_stages)]
        dims = [int(d) for d in dims]
        if len(dims) != num_stages:
            raise ValueError(f"dims {dims} and depths {depths} must have the same number of stages")
        self.patch_size = int(patch_size)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.dims = dims
        self.num_features = dims[-1]
        self.num_classes = num_classes
        self.features_only = features_only
        self.grad_checkpointing = use_checkpoint

        core, with_z = _parse_forward_type(forward_type)
        mixer_kwargs = dict(d_state=ssm_d_state, dt_rank=ssm_dt_rank, act_layer=_act_layer(ssm_act_layer),
                            d_conv=ssm_conv, conv_bias=ssm_conv_bias, with_z=with_z, dropout=ssm_drop_rate,
                            init=ssm_init, backend=op_backend)
        if core == "m0":
            mixer_kwargs.update(mixer_cls=SS2DMamba2, chunk_size=ssd_chunk_size)
        else:
            mixer_kwargs.update(mixer_cls=SS2D)

        self.patch_embed = _make_stem(patchembed_version, in_chans, dims[0], self.patch_size)
        self._check_size(self.img_size, "img_size")

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            blocks = [VSSBlock(dims[i], drop_path=dpr[sum(depths[:i]) + j], ssm_ratio=ssm_ratio,
                               mlp_ratio=mlp_ratio, mlp_act_layer=_act_layer(mlp_act_layer),
                               mlp_drop_rate=mlp_drop_rate, use_checkpoint=use_checkpoint, **mixer_kwargs)
                      for j in range(depth)]
            downsample = (_make_downsample(downsample_version, dims[i], dims[i + 1]) if i < num_stages - 1
                          else nn.Identity())
            self.layers.append(nn.Sequential(OrderedDict(blocks=nn.Sequential(*blocks), downsample=downsample)))

        info = [dict(num_chs=dims[i], reduction=self.patch_size * 2 ** i, module=f"layers.{i}")
                for i in range(num_stages)]
        self.head_drop = nn.Dropout(drop_rate)
        if features_only:
            self.out_indices = tuple(take_indices(num_stages, out_indices)[0])
            for i in self.out_indices:
                self.add_module(f"outnorm{i}", _norm(dims[i]))
            self.num_classes = 0
        else:
            self.out_indices = tuple(range(num_stages))
            self.classifier = nn.Sequential(OrderedDict(
                norm=_norm(self.num_features), permute=nn.Identity(), avgpool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                head=nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()))
        self.feature_info = FeatureInfo(info, self.out_indices)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        """Spec §1.7: Linear (incl. Linear2d) trunc_normal(0.02) / bias 0, LayerNorm 1 / 0; convs default."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _check_size(self, size, what):
        h, w = size
        p = self.patch_size
        if h < p or w < p or h % p or w % p:
            raise ValueError(f"VMamba: {what} {h}x{w} must be a positive multiple of patch_size={p} in both "
                             f"H and W (the stem's total stride); e.g. pad/resize the input or pass "
                             f"patch_size=2 for small images")

    @torch.jit.ignore
    def no_weight_decay(self):
        return {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    def layer_ids(self):
        """{parameter name: layer id} for layer-wise lr decay: stem 0, blocks 1.. across the stages,
        head last (py.models.features.stage_layer_ids)."""
        return stage_layer_ids(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = enable
        for m in self.modules():
            if isinstance(m, VSSBlock):
                m.use_checkpoint = enable

    @torch.jit.ignore
    def get_classifier(self):
        return self.classifier.head

    def reset_classifier(self, num_classes, global_pool=None):
        if self.features_only:
            raise RuntimeError("a features_only VMamba has no classifier")
        self.num_classes = num_classes
        self.classifier.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.classifier.head.apply(self._init_weights)

    def forward_features(self, x):
        """(B, in_chans, H, W) -> last-stage map (B, dims[-1], ~H/32, ~W/32), before the classifier norm."""
        self._check_size(tuple(x.shape[-2:]), "input")
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_head(self, x, pre_logits=False):
        c = self.classifier
        x = self.head_drop(c.flatten(c.avgpool(c.norm(x))))
        return x if pre_logits else c.head(x)

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
                              intermediates_only=False):
        """Stage outputs before their downsample (strides 4..32) for the stages `indices` (py.models.features).
        norm=True passes the last stage's output through the classifier norm, as timm does. Returns the
        list, or (forward_features(x), list)."""
        check_output_fmt(output_fmt, ("NCHW", "NHWC"))
        take, max_index = take_indices(len(self.layers), indices)
        self._check_size(tuple(x.shape[-2:]), "input")
        x = self.patch_embed(x)
        last = len(self.layers) - 1
        intermediates = []
        for i, layer in enumerate(self.layers[:max_index + 1] if stop_early else self.layers):
            y = layer.blocks(x)
            if i in take:
                tap = self.classifier.norm(y) if norm and i == last and hasattr(self, "classifier") else y
                intermediates.append(nchw_to(tap, output_fmt))
            x = layer.downsample(y)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True):
        """Drops the stages after the last of `indices` (and the head/norm); returns the kept indices."""
        take, max_index = take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        self.layers[-1].downsample = nn.Identity()  # it fed a stage that is gone
        if hasattr(self, "classifier"):
            if prune_head:
                self.reset_classifier(0)
            if prune_norm or max_index < len(self.dims) - 1:  # the norm is sized for the last stage
                self.classifier.norm = nn.Identity()
        return take

    def forward(self, x):
        if self.features_only:
            feats = self.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True)
            return [getattr(self, f"outnorm{i}")(f) for i, f in zip(self.out_indices, feats)]
        return self.forward_head(self.forward_features(x))


def _linear_from_conv1x1(t, shape):
    """(out, in, 1, 1) conv weight -> (out, in) Linear weight."""
    if t.dim() == 4 and t.shape[2:] == (1, 1) and tuple(t.shape[:2]) == tuple(shape):
        return t.flatten(1)
    return None


interop.register_family("vmamba", VMamba, tensor_rules=(
    interop.TensorRule(r"(^|\.)(in_proj|out_proj|fc1|fc2)\.weight$", _linear_from_conv1x1, None,
                       "VMamba's Linear2d also loads 1x1-conv-shaped weights (out, in, 1, 1); the "
                       "official state dict itself stores (out, in), as we do"),
))


# ----------------------------------------------------------------------------------------------
# Configurations (spec §1.6, §1.8) and builders
# ----------------------------------------------------------------------------------------------
_V2_DEFAULTS = dict(
    patch_size=4, ssm_d_state=1, ssm_dt_rank="auto", ssm_act_layer="silu", ssm_conv=3, ssm_conv_bias=False,
    ssm_init="v0", forward_type="v05_noz", mlp_ratio=4.0, mlp_act_layer="gelu", patchembed_version="v2",
    downsample_version="v3",
)

MODEL_CFGS = {
    # VMamba-T[s1l8] (vmambav2v_tiny_224.yaml): 30,249,064 params, 4.91 GFLOPs, 82.6 top-1.
    "vmamba_tiny_s1l8": dict(_V2_DEFAULTS, dims=96, depths=(2, 2, 8, 2), ssm_ratio=1.0, drop_path_rate=0.2),
    # VMamba-S[s2l15] (vmambav2_small_224.yaml): 50,147,752 params, 8.7 GFLOPs, 83.6 top-1.
    "vmamba_small_s2l15": dict(_V2_DEFAULTS, dims=96, depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.3),
    # VMamba-B[s2l15] (vmambav2_base_224.yaml): 88,557,800 params, 15.4 GFLOPs, 83.9 top-1.
    "vmamba_base_s2l15": dict(_V2_DEFAULTS, dims=128, depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.6),
    # Upstream vmamba_tiny_m2 (Mamba-2/SSD mixer, no released weights), channel-first here.
    "vmamba_tiny_ssd": dict(_V2_DEFAULTS, dims=96, depths=(2, 2, 4, 2), ssm_ratio=1.0, ssm_d_state=64,
                            ssm_act_layer="gelu", ssm_init="v2", forward_type="m0_noz", ssd_chunk_size=64,
                            drop_path_rate=0.2),
}


def _create_vmamba(variant, num_classes, img_size, **overrides):
    return VMamba(num_classes=num_classes, img_size=img_size, **dict(MODEL_CFGS[variant], **overrides))


_CFG = dict(first_conv="patch_embed.0", classifier="classifier.head")


@register_model(imagenet_cfg(**_CFG))
def vmamba_tiny_s1l8(num_classes=1000, img_size=224, **overrides):
    """VMamba-T[s1l8]: dims 96, depths 2-2-8-2, ssm_ratio 1, d_state 1 (30.2M params)."""
    return _create_vmamba("vmamba_tiny_s1l8", num_classes, img_size, **overrides)


@register_model(imagenet_cfg(**_CFG))
def vmamba_small_s2l15(num_classes=1000, img_size=224, **overrides):
    """VMamba-S[s2l15]: dims 96, depths 2-2-15-2, ssm_ratio 2, d_state 1 (50.1M params)."""
    return _create_vmamba("vmamba_small_s2l15", num_classes, img_size, **overrides)


@register_model(imagenet_cfg(**_CFG))
def vmamba_base_s2l15(num_classes=1000, img_size=224, **overrides):
    """VMamba-B[s2l15]: dims 128, depths 2-2-15-2, ssm_ratio 2, d_state 1 (88.6M params)."""
    return _create_vmamba("vmamba_base_s2l15", num_classes, img_size, **overrides)


@register_model(imagenet_cfg(**_CFG))
def vmamba_tiny_ssd(num_classes=1000, img_size=224, **overrides):
    """VMamba-T with the Mamba-2/SSD mixer (upstream vmamba_tiny_m2): depths 2-2-4-2, d_state 64."""
    return _create_vmamba("vmamba_tiny_ssd", num_classes, img_size, **overrides)
