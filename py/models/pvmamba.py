"""PVMamba (ICCV 2025): parallel Vision Mamba with Dynamic State Aggregation (DSA).

Written from /work/shared/specs/pvmamba.md (the released `classification/models/pvmamba.py` is the only
model code; the paper text is not public). A four-stage hierarchical net on the VSSD skeleton:

    img -> stem (stride 4) -> [LoDSA blocks] -> merge -> [LoDSA blocks] -> merge
        -> [SaDSA blocks] -> merge -> [softmax-attention blocks] -> LayerNorm -> mean -> Linear

Every block is  x += cpe1(x);  x += DropPath(mixer(LN(x)));  x += cpe2(x);  x += DropPath(MLP(LN(x))),
with cpe = depthwise 3x3 conv. The token mixer of stages 0-2 (`PVMambaMixer`, upstream `mamba_op`) is
the VSSD non-causal SSD with PVMamba's changes (spec section 2.2):

    z | xBC | dt = in_proj(u);  dt = softplus(dt + dt_bias);  A = -exp(A_log)     (A per *channel*)
    x | Bm | Cm = silu(dwconv3x3(xBC))                          (Bm, Cm shared by all heads)
    dA[l, h*P+p] = dt[l, h] * A[h*P+p]                           (<= 0, not sign-flipped as in VSSD)
    V' = DSA(x, dA)                                             (LoDSA / SaDSA, below)
    Hs = Bm^T V'   (N x d_inner, one global state),   Y = Cm Hs + D_h * x
    out = out_proj(LayerNorm(Y) * z)                            (z NOT passed through SiLU: upstream)

DSA (the per-token term that replaces VSSD's (-dt A) x):
  * LoDSA (stages 0-1): V' = AvgPool3x3(dA * x), stride 1, pad 1, count_include_pad=False.
  * SaDSA (stage 2): K = 4 sampling locations S per token (normalised (x, y) in [0, 1]);
    agg[l, c] = mean_k x(S_k)[c] * (dA(S_k)[c] - dA(l)[c])  (bilinear samples, zero outside).
    Layer multiplexing (`spatial_flag` per block): 0 = predict fresh offsets (pixels) around the pixel
    centre with Linear(d_inner, 2K); 1 = add predicted offsets to the previous block's locations;
    2 = reuse the previous locations (no parameters). The locations flow through the stage (with
    gradients) and are reset to None by the attention stage.
    The sampling runs through F.grid_sample (`dsa_sampler="grid_sample"`, upstream's formulation, the
    default) or through `py.ops.dcnv4` (`dsa_sampler="dcnv4"`: one 1x1-kernel DCNv4 call per point with
    the offsets expressed relative to the pixel and modulation 1); both give the same numbers.
  * Upstream layout quirk: agg (B, L, d_inner) is reinterpreted as (B, nheads, L, P) with a `.view` and
    no transpose, so "head a, token l" reads token (a*L+l)//nh, head (a*L+l)%nh of agg.
    `official_layout=True` (default, needed for checkpoint parity) replicates this;
    False uses the intended layout V'[l, h*P+p] = agg[l, h*P+p]. LoDSA has no quirk.

Why the state product is not `py.ops.ssd(causal=False)` by default: ssd's non-causal form is
y_i = C_i . sum_j B_j^T (w_j x_j) + D x_i with one scalar weight w_j = -dt'_j A_h per (token, head)
multiplying the *same* x that the D-skip uses. PVMamba's per-token term is neither: A is per channel and
the term is a spatial aggregation (LoDSA pooling / SaDSA sampling) of dA*x, so it does not fit the op's
(dt, A, x) parametrisation. The state product itself is plain linear attention with Q = Cm, K = Bm and
shared B/C, so the default (`state_backend="matmul"`) computes it directly as two matmuls,
Cm @ (Bm^T @ V'), exactly like upstream. `state_backend="ssd"` instead routes it through
py.ops.ssd(causal=False) by the degenerate mapping x := V', dt := 1, A := -1 (so w_j = 1), D := None,
and adds D*x outside; it gives the same result (tested) and is there to exercise the shared op.

FLOPs (spec section 5: fvcore, 1 multiply-add = 1 FLOP, 1x3x224x224, eval): tiny 4.50G, small 7.44G,
base 16.24G (16.18G with the builder heads). Per mixer with L tokens, d_inner = nh*P, N = d_state:
  * state product: true MACs 2*L*N*d_inner; fvcore counts upstream's broadcasting
    (1, 1, N, L) @ (1, nh, L, P) matmuls as 2*L*N*P (no head factor), and the published numbers include
    this undercount. The default path uses the same matmul shapes, so py.models.flops reproduces them.
  * SaDSA sampling: grid_sample over 2*d_inner channels and K points: 4*L*2*d_inner*K (4 per output
    element); with dsa_sampler="dcnv4" the op reports 5 per element (bilinear + modulation), i.e.
    5*L*2*d_inner*K. The aggregation's element-wise products/means, LoDSA's avg-pool, softplus, exp
    and the D-skip count 0.
  * attention: 2*h*L^2*(C/h) per block (fvcore's einsum count).

Parameter counts (default init, 1000 classes): tiny 24,288,328; small 40,116,348; base 88,849,900
(base.yaml's heads [2, 4, 8, 16]; the in-file upstream builder's [3, 6, 12, 24] gives 88,884,170,
available as `num_heads=(3, 6, 12, 24)`). The upstream README swaps the tiny/base names; these names
follow the configs (tiny = 24M / 4.5G, small = 40M / 7.4G, base = 89M / 16.1G).

Input size: any H, W >= 1. Each stride-2 conv maps a side s to ceil(s/2) and the stages use the grid
they actually get, so 224 -> 56/28/14/7 and 28 -> 7/4/2/1. (Upstream halves with floor division and so
needs H, W divisible by 32; on such sizes both agree.)
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_, to_2tuple

from py.models import interop
from py.models.features import FeatureInfo, check_output_fmt, checkpointed, stage_layer_ids, take_indices
from py.models.registry import imagenet_cfg, register_model

__all__ = ["PVMamba", "PVMambaBlock", "PVMambaMixer", "SpatialAdaptiveSampler", "Attention",
           "multiplex_flags", "dsa_layout", "nc_ssd_linear", "nc_ssd_quadratic", "MODEL_CFGS"]

TOKEN_MIXERS = ("LoDSA", "SaDSA", "attention")
DSA_SAMPLERS = ("grid_sample", "dcnv4")
STATE_BACKENDS = ("matmul", "ssd")


def multiplex_flags(depth, period=3):
    """SaDSA layer-multiplexing flags of a stage: 0 first, then 1 every `period` blocks, else 2."""
    return tuple(0 if i == 0 else (1 if i % period == 0 else 2) for i in range(depth))


# Named configs (spec section 1.1; values of classification/configs/pvmamba/{tiny,small,base}.yaml).
_COMMON = dict(mlp_ratio=4.0, d_state=64, ssd_expansion=2, n_points=4,
               token_mixers=("LoDSA", "LoDSA", "SaDSA", "attention"))
MODEL_CFGS = {
    "pvmamba_tiny": dict(_COMMON, embed_dim=64, depths=(2, 4, 8, 4), num_heads=(2, 4, 8, 16),
                         drop_path_rate=0.2,
                         spatial_flags=((), (), (0, 2, 2, 1, 2, 2, 1, 2), ())),
    "pvmamba_small": dict(_COMMON, embed_dim=64, depths=(3, 4, 21, 5), num_heads=(2, 4, 8, 16),
                          drop_path_rate=0.4,
                          spatial_flags=((), (), (0, 2, 2, 1, 2, 2, 1, 2, 2, 1, 2, 2, 1, 2, 2, 1, 2, 2,
                                                  1, 2, 2), ())),
    "pvmamba_base": dict(_COMMON, embed_dim=96, depths=(3, 4, 21, 5), num_heads=(2, 4, 8, 16),
                         drop_path_rate=0.6,
                         spatial_flags=((), (), (0, 2, 2, 1, 2, 2, 1, 2, 2, 1, 2, 2, 1, 2, 2, 1, 2, 2,
                                                 1, 2, 2), ())),
}


# ------------------------------------------------------------------------------------------------
# Stem and downsampling (MLLA/VSSD style; attribute names follow upstream for checkpoint parity)

class ConvLayer(nn.Module):
    """Conv2d -> optional BatchNorm2d -> optional activation."""

    def __init__(self, in_chs, out_chs, kernel_size=3, stride=1, padding=0, groups=1, bias=True,
                 norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, groups=groups,
                              bias=bias)
        self.norm = nn.BatchNorm2d(out_chs) if norm else None
        self.act = nn.ReLU() if act else None

    def forward(self, x):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class PatchEmbed(nn.Module):
    """Stride-4 conv stem: conv3x3/2 -> residual [conv3x3, conv3x3] -> conv3x3/2 (to 4E) -> conv1x1 (to E)."""

    def __init__(self, in_chans=3, embed_dim=64):
        super().__init__()
        half = embed_dim // 2
        self.conv1 = ConvLayer(in_chans, half, 3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Sequential(ConvLayer(half, half, 3, padding=1, bias=False),
                                   ConvLayer(half, half, 3, padding=1, bias=False, act=False))
        self.conv3 = nn.Sequential(ConvLayer(half, embed_dim * 4, 3, stride=2, padding=1, bias=False),
                                   ConvLayer(embed_dim * 4, embed_dim, 1, bias=False, act=False))

    def forward(self, x):
        x = self.conv1(x)
        x = self.conv2(x) + x
        return self.conv3(x)  # (B, E, ceil(H/4), ceil(W/4))


class PatchMerging(nn.Module):
    """Inverted-residual downsampling (no residual): 1x1 C->8C, ReLU; dw3x3/2, ReLU; 1x1 8C->2C, BN."""

    def __init__(self, dim, ratio=4.0):
        super().__init__()
        hidden = int(2 * dim * ratio)
        self.conv = nn.Sequential(ConvLayer(dim, hidden, 1, norm=False),
                                  ConvLayer(hidden, hidden, 3, stride=2, padding=1, groups=hidden, norm=False),
                                  ConvLayer(hidden, 2 * dim, 1, act=False))

    def forward(self, x, H, W):
        B, L, C = x.shape
        x = self.conv(x.transpose(1, 2).reshape(B, C, H, W))
        return x.flatten(2).transpose(1, 2), x.shape[-2], x.shape[-1]


# ------------------------------------------------------------------------------------------------
# DSA building blocks

def nc_ssd_linear(v, Bm, Cm):
    """Linear (state) form of the non-causal state product, per head: Y_h = Cm (Bm^T V'_h).

    v (B, nheads, L, P); Bm, Cm (B, L, N) shared by all heads -> (B, nheads, L, P).
    True MACs 2*B*L*N*nheads*P. Written, like upstream, as broadcasting matmuls
    (B, 1, N, L) @ (B, nheads, L, P), which fvcore's matmul rule counts as 2*B*L*N*P (no head factor).
    """
    Bm, Cm = Bm.unsqueeze(1), Cm.unsqueeze(1)
    return Cm @ (Bm.transpose(-1, -2) @ v)


def nc_ssd_quadratic(v, Bm, Cm):
    """Quadratic (attention-like) form of the same product, Y_h = (Cm Bm^T) V'_h (test oracle)."""
    return (Cm @ Bm.transpose(-1, -2)).unsqueeze(1) @ v


def dsa_layout(agg, nheads, official=True):
    """Maps the SaDSA aggregate agg (B, L, C = nheads*P), channel h*P+p, to V' (B, nheads, L, P).

    official=True replicates upstream's `.view(B, nheads, L, P)` without a transpose:
    V'[b, a, l, p] = agg[b, (a*L+l)//nheads, ((a*L+l)%nheads)*P + p].
    official=False is the intended per-head split V'[b, h, l, p] = agg[b, l, h*P+p].
    """
    B, L, C = agg.shape
    if official:
        return agg.contiguous().view(B, nheads, L, C // nheads)
    return agg.view(B, L, nheads, C // nheads).transpose(1, 2)


def _sample_grid_sample(value, locations, H, W):
    """Bilinear samples of value (B, L, Cv) on the H x W grid at normalised (x, y) locations (B, L, K, 2).

    Returns (B, Cv, L, K). Pixel centres sit at (S*size - 0.5); zeros outside (align_corners=False).
    """
    B, L, Cv = value.shape
    img = value.transpose(1, 2).reshape(B, Cv, H, W)
    return F.grid_sample(img, 2 * locations - 1, mode="bilinear", padding_mode="zeros", align_corners=False)


def _sample_dcnv4(value, locations, H, W):
    """Same samples through py.ops.dcnv4: per point k a 1x1 DCNv4 (group 1, modulation 1) whose offset is
    the location relative to the output pixel, in pixels. Returns (B, Cv, L, K) like `_sample_grid_sample`.
    """
    from py.ops.dcnv4 import dcnv4

    B, L, Cv = value.shape
    K = locations.shape[2]
    img = value.reshape(B, H, W, Cv)
    dev, dt = value.device, value.dtype
    col = torch.arange(W, device=dev, dtype=dt).repeat(H)  # (L,)
    row = torch.arange(H, device=dev, dtype=dt).repeat_interleave(W)
    dx = locations[..., 0].to(dt) * W - 0.5 - col[None, :, None]  # (B, L, K)
    dy = locations[..., 1].to(dt) * H - 0.5 - row[None, :, None]
    ones = torch.ones_like(dx[..., 0])
    pad = dx.new_zeros(B, L, 5)
    outs = []
    for k in range(K):
        om = torch.cat([dx[..., k, None], dy[..., k, None], ones[..., None], pad], dim=-1).view(B, H, W, 8)
        outs.append(dcnv4(img, om, 1, 1, 1, 1, 0, 0, 1, 1, group=1, group_channels=Cv).view(B, L, Cv))
    return torch.stack(outs, dim=-1).transpose(1, 2)  # (B, Cv, L, K)


class SpatialAdaptiveSampler(nn.Module):
    """SaDSA aggregation (upstream `spatial_adaptive_operator`) with layer multiplexing.

    spatial_flag 0: locations = pixel centre + Linear(x)/(W, H); 1: previous + Linear(x)/(W, H);
    2: previous (no parameters). Locations are (B, L, 1, 1, K, 2), normalised (x, y).
    """

    def __init__(self, d_inner, n_points=4, spatial_flag=0, sampler="grid_sample"):
        super().__init__()
        if spatial_flag not in (0, 1, 2):
            raise ValueError(f"spatial_flag must be 0, 1 or 2, got {spatial_flag!r}")
        if sampler not in DSA_SAMPLERS:
            raise ValueError(f"dsa_sampler must be one of {DSA_SAMPLERS}, got {sampler!r}")
        self.n_points = n_points
        self.spatial_flag = spatial_flag
        self.sampler = sampler
        # Upstream's special bias init (points 1..K px to the right) is overwritten by the model's
        # trunc_normal/zero Linear init (spec 1.6), so only the model-level init matters.
        self.sampling_offsets = nn.Linear(d_inner, 2 * n_points) if spatial_flag != 2 else None

    def locations(self, x, H, W, points):
        B, L, _ = x.shape
        K = self.n_points
        if self.spatial_flag == 2:
            if points is None:
                raise ValueError("SaDSA block with spatial_flag=2 needs the previous block's locations")
            return points
        scale = torch.tensor([W, H], dtype=x.dtype, device=x.device)
        off = self.sampling_offsets(x).view(B, L, 1, 1, K, 2) / scale
        if self.spatial_flag == 1:
            if points is None:
                raise ValueError("SaDSA block with spatial_flag=1 needs the previous block's locations")
            return points + off
        ref_x = (torch.arange(W, device=x.device, dtype=x.dtype) + 0.5) / W
        ref_y = (torch.arange(H, device=x.device, dtype=x.dtype) + 0.5) / H
        ref = torch.stack([ref_x.repeat(H), ref_y.repeat_interleave(W)], dim=-1)  # (L, 2)
        return ref.view(1, L, 1, 1, 1, 2) + off

    def forward(self, x, dA, H, W, points=None):
        """x, dA (B, L, C) -> agg (B, L, C), locations (B, L, 1, 1, K, 2)."""
        B, L, C = x.shape
        points = self.locations(x, H, W, points)
        sample = _sample_dcnv4 if self.sampler == "dcnv4" else _sample_grid_sample
        s = sample(torch.cat([x, dA], dim=-1), points.view(B, L, self.n_points, 2), H, W)  # (B, 2C, L, K)
        xs, as_ = s[:, :C], s[:, C:]
        agg = (xs * (as_ - dA.transpose(1, 2).unsqueeze(-1))).mean(-1)  # (B, C, L)
        return agg.transpose(1, 2).contiguous(), points


class StateProduct(nn.Module):
    """The non-causal state product Cm (Bm^T V') of PVMambaMixer, a module of its own (no parameters)
    so that analysis tools can observe its inputs with a forward hook (py/eval/attention_maps.py)."""

    def __init__(self, state_backend="matmul"):
        super().__init__()
        self.state_backend = state_backend

    def forward(self, v, Bm, Cm):
        if self.state_backend == "matmul":
            return nc_ssd_linear(v, Bm, Cm)
        from py.ops.ssd import ssd

        B, nheads, L, _ = v.shape
        y = ssd(v.transpose(1, 2), v.new_ones(B, L, nheads), -v.new_ones(nheads),
                Bm.unsqueeze(2), Cm.unsqueeze(2), chunk_size=256, causal=False)
        return y.transpose(1, 2)


class PVMambaMixer(nn.Module):
    """DSA token mixer of stages 0-2 (upstream `mamba_op`); see the module docstring for the maths."""

    def __init__(self, dim, num_heads, d_state=64, expand=2, pattern="LoDSA", spatial_flag=0, n_points=4,
                 dsa_sampler="grid_sample", official_layout=True, state_backend="matmul", d_conv=3,
                 dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4, A_init_range=(1.0, 16.0)):
        super().__init__()
        if pattern not in ("LoDSA", "SaDSA"):
            raise ValueError(f"pattern must be 'LoDSA' or 'SaDSA', got {pattern!r}")
        if state_backend not in STATE_BACKENDS:
            raise ValueError(f"state_backend must be one of {STATE_BACKENDS}, got {state_backend!r}")
        self.d_inner = int(expand * dim)
        if self.d_inner % num_heads:
            raise ValueError(f"d_inner = {self.d_inner} (expand*dim) must be divisible by num_heads = {num_heads}")
        self.nheads = num_heads
        self.headdim = self.d_inner // num_heads
        self.d_state = d_state
        self.pattern = pattern
        self.official_layout = official_layout
        self.state_backend = state_backend
        self.product = StateProduct(state_backend)
        conv_dim = self.d_inner + 2 * d_state
        self.in_proj = nn.Linear(dim, 2 * self.d_inner + 2 * d_state + num_heads, bias=False)
        self.conv2d = nn.Conv2d(conv_dim, conv_dim, d_conv, padding=(d_conv - 1) // 2, groups=conv_dim)
        self.act = nn.SiLU()
        dt = torch.exp(torch.rand(num_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(self.d_inner).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(num_heads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)
        if pattern == "LoDSA":
            self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        else:
            self.sa_op = SpatialAdaptiveSampler(self.d_inner, n_points, spatial_flag, dsa_sampler)

    def project(self, u, H, W):
        """u (B, L, dim) -> z, x (B, L, d_inner), Bm, Cm (B, L, N), dA (B, L, d_inner)."""
        B, L, _ = u.shape
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.d_inner + 2 * self.d_state, self.nheads],
                                 dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (B, L, nheads)
        xBC = self.act(self.conv2d(xBC.transpose(1, 2).reshape(B, -1, H, W))).flatten(2).transpose(1, 2)
        x, Bm, Cm = torch.split(xBC, [self.d_inner, self.d_state, self.d_state], dim=-1)
        A = -torch.exp(self.A_log).view(self.nheads, self.headdim)
        dA = (dt.unsqueeze(-1) * A).reshape(B, L, self.d_inner)
        return z, x, Bm, Cm, dA

    def aggregate(self, x, dA, H, W, points=None):
        """DSA: V' (B, nheads, L, P) and the (possibly new) SaDSA locations (LoDSA passes them through)."""
        B, L, C = x.shape
        if self.pattern == "LoDSA":
            v = self.pool((dA * x).transpose(1, 2).reshape(B, C, H, W))  # (B, C, H, W)
            return v.view(B, self.nheads, self.headdim, L).transpose(-1, -2), points
        agg, points = self.sa_op(x, dA, H, W, points)
        return dsa_layout(agg, self.nheads, self.official_layout), points

    def state_product(self, v, Bm, Cm):
        """Cm (Bm^T V') for heads sharing Bm/Cm (ngroups = 1): v (B, nheads, L, P) -> (B, nheads, L, P)."""
        return self.product(v, Bm, Cm)

    def forward(self, u, H, W, points=None):
        z, x, Bm, Cm, dA = self.project(u, H, W)
        v, points = self.aggregate(x, dA, H, W, points)
        B, L, C = x.shape
        y = self.state_product(v, Bm, Cm).transpose(1, 2).reshape(B, L, C)
        y = y + x * self.D.repeat_interleave(self.headdim)
        return self.out_proj(self.norm(y) * z), points


class Attention(nn.Module):
    """Global softmax MHSA of the last stage: qkv Linear without bias, scale head_dim^-0.5."""

    def __init__(self, dim, num_heads, attn_drop=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, H=None, W=None, points=None):
        B, L, C = x.shape
        q, k, v = self.to_qkv(x).view(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.to_out(x.transpose(1, 2).reshape(B, L, C)), None


class PVMambaBlock(nn.Module):
    """cpe -> LN -> token mixer -> cpe -> LN -> MLP, residual; threads the SaDSA locations."""

    def __init__(self, dim, num_heads, token_mixer="LoDSA", mlp_ratio=4.0, drop=0.0, drop_path=0.0,
                 spatial_flag=0, **mixer_kwargs):
        super().__init__()
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        if token_mixer == "attention":
            self.token_mixer = Attention(dim, num_heads, attn_drop=drop)
        else:
            self.token_mixer = PVMambaMixer(dim, num_heads, pattern=token_mixer, spatial_flag=spatial_flag,
                                            **mixer_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    @staticmethod
    def _cpe(conv, x, H, W):
        B, L, C = x.shape
        return conv(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)

    def forward(self, x, H, W, points=None):
        x = x + self._cpe(self.cpe1, x, H, W)
        y, points = self.token_mixer(self.norm1(x), H, W, points)
        x = x + self.drop_path(y)
        x = x + self._cpe(self.cpe2, x, H, W)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, points


class PVMambaStage(nn.Module):
    """Blocks of one stage (upstream `BasicLayer`) and the optional downsampling after them."""

    def __init__(self, dim, depth, num_heads, token_mixer, spatial_flags, drop_path, downsample, **block_kwargs):
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList([
            PVMambaBlock(dim, num_heads, token_mixer, drop_path=drop_path[i],
                         spatial_flag=spatial_flags[i] if token_mixer == "SaDSA" else 0, **block_kwargs)
            for i in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else None
        self.grad_checkpointing = False

    def forward(self, x, H, W, points=None):
        """Returns (stage output before downsampling, downsampled tokens, new H, new W, points)."""
        for blk in self.blocks:
            x, points = checkpointed(lambda t, p, blk=blk: blk(t, H, W, p), x, points,
                                     enabled=self.grad_checkpointing and self.training)
        if self.downsample is None:
            return x, x, H, W, points
        y, H2, W2 = self.downsample(x, H, W)
        return x, y, H2, W2, points


class PVMamba(nn.Module):
    """PVMamba classifier / dense-prediction backbone.

    forward_intermediates(x, indices, ...) (py.models.features): stage outputs before downsampling at
    strides 4, 8, 16, 32. features_only=True drops the final norm and head, adds a LayerNorm
    `outnorm{i}` per returned stage (like upstream's Backbone_PVMAMBA, whose checkpoints load) and makes
    forward() return forward_intermediates(x, out_indices) through them, as NCHW maps.
    """

    def __init__(self, img_size=224, in_chans=3, num_classes=1000, embed_dim=64, depths=(2, 4, 8, 4),
                 num_heads=(2, 4, 8, 16), token_mixers=("LoDSA", "LoDSA", "SaDSA", "attention"),
                 spatial_flags=None, mlp_ratio=4.0, d_state=64, ssd_expansion=2, n_points=4, drop_rate=0.0,
                 drop_path_rate=0.2, dsa_sampler="grid_sample", official_layout=True, state_backend="matmul",
                 features_only=False, out_indices=(0, 1, 2, 3)):
        super().__init__()
        n = len(depths)
        if not (len(num_heads) == len(token_mixers) == n):
            raise ValueError(f"depths, num_heads and token_mixers need one entry per stage, got "
                             f"{len(depths)}, {len(num_heads)}, {len(token_mixers)}")
        for t in token_mixers:
            if t not in TOKEN_MIXERS:
                raise ValueError(f"token mixer must be one of {TOKEN_MIXERS}, got {t!r}")
        if dsa_sampler not in DSA_SAMPLERS:
            raise ValueError(f"dsa_sampler must be one of {DSA_SAMPLERS}, got {dsa_sampler!r}")
        if state_backend not in STATE_BACKENDS:
            raise ValueError(f"state_backend must be one of {STATE_BACKENDS}, got {state_backend!r}")
        img_size = to_2tuple(img_size)
        if min(img_size) < 1:
            raise ValueError(f"img_size must be positive, got {img_size}")
        flags = []
        for i in range(n):
            f = tuple(spatial_flags[i]) if spatial_flags is not None and i < len(spatial_flags) else ()
            if token_mixers[i] == "SaDSA":
                if len(f) != depths[i]:  # e.g. depths overridden: rebuild the upstream pattern
                    f = multiplex_flags(depths[i])
                if f and f[0] != 0:
                    raise ValueError(f"the first SaDSA block of stage {i} must predict fresh locations "
                                     f"(flag 0), got flags {f}")
            flags.append(f)
        self.img_size = img_size
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.dims = [int(embed_dim * 2 ** i) for i in range(n)]
        self.num_features = self.dims[-1]
        self.features_only = features_only
        self.out_indices = tuple(take_indices(n, out_indices)[0]) if features_only else tuple(range(n))

        self.patch_embed = PatchEmbed(in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [v.item() for v in torch.linspace(0, drop_path_rate, sum(depths))]
        mixer_kwargs = dict(d_state=d_state, expand=ssd_expansion, n_points=n_points, dsa_sampler=dsa_sampler,
                            official_layout=official_layout, state_backend=state_backend)
        self.layers = nn.ModuleList()
        for i in range(n):
            self.layers.append(PVMambaStage(
                self.dims[i], depths[i], num_heads[i], token_mixers[i], flags[i],
                dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=i < n - 1, mlp_ratio=mlp_ratio,
                drop=drop_rate, **mixer_kwargs))
        self.feature_info = FeatureInfo([dict(num_chs=self.dims[i], reduction=4 * 2 ** i, module=f"layers.{i}")
                                         for i in range(n)], self.out_indices)
        if features_only:
            for i in self.out_indices:
                self.add_module(f"outnorm{i}", nn.LayerNorm(self.dims[i]))
            self.num_classes = 0
            self.norm = None
            self.head = None
        else:
            self.norm = nn.LayerNorm(self.num_features)
            self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    def layer_ids(self):
        """{parameter name: layer id} for layer-wise lr decay: stem 0, blocks 1.. across the stages,
        head last (py.models.features.stage_layer_ids)."""
        return stage_layer_ids(self)

    def get_classifier(self):
        return self.head

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        """Recompute each block in the backward instead of keeping its activations."""
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def reset_classifier(self, num_classes, global_pool=None):
        if self.features_only:
            raise RuntimeError("reset_classifier is not available with features_only=True")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    def _check_input(self, x):
        if x.dim() != 4 or x.shape[1] != self.patch_embed.conv1.conv.in_channels:
            raise ValueError(f"expected input (B, {self.patch_embed.conv1.conv.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")

    def _stages(self, x, last):
        """Yields (stage index, NCHW-able tokens before downsampling, H, W) up to stage `last`."""
        self._check_input(x)
        x = self.patch_embed(x)
        H, W = x.shape[-2:]
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        points = None
        for i, layer in enumerate(self.layers[:last + 1]):
            out, x, H2, W2, points = layer(x, H, W, points)
            yield i, out, H, W
            H, W = H2, W2

    def forward_features(self, x):
        """Final-stage tokens after the last LayerNorm, as (B, H/32, W/32, C) (NHWC)."""
        if self.features_only:
            return self.forward(x)
        for i, out, H, W in self._stages(x, len(self.layers) - 1):
            pass
        out = self.norm(out)
        return out.view(out.shape[0], H, W, -1)

    def forward_head(self, x, pre_logits=False):
        x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
                              intermediates_only=False):
        """Stage outputs before downsampling for the stages `indices` (py.models.features); norm=True
        passes the last stage's output through the final norm, as timm does. Returns the list, or
        (forward_features(x), list)."""
        check_output_fmt(output_fmt, ("NCHW", "NHWC"))
        take, max_index = take_indices(len(self.layers), indices)
        last = len(self.layers) - 1
        intermediates = []
        for i, out, H, W in self._stages(x, max_index if stop_early else last):
            if i in take:
                tap = self.norm(out) if norm and i == last and self.norm is not None else out
                tap = tap.view(tap.shape[0], H, W, -1)
                intermediates.append(tap if output_fmt == "NHWC" else tap.permute(0, 3, 1, 2).contiguous())
        if intermediates_only:
            return intermediates
        final = self.norm(out) if self.norm is not None and i == last else out
        return final.view(final.shape[0], H, W, -1), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True):
        """Drops the stages after the last of `indices` (and the head/norm); returns the kept indices."""
        take, max_index = take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        self.layers[-1].downsample = None  # it fed a stage that is gone
        if not self.features_only:
            if prune_head:
                self.reset_classifier(0)
            if prune_norm or max_index < len(self.dims) - 1:  # the norm is sized for the last stage
                self.norm = nn.Identity()
        return take

    def forward(self, x):
        if self.features_only:
            feats = self.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True)
            return [getattr(self, f"outnorm{i}")(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
                    for i, f in zip(self.out_indices, feats)]
        return self.forward_head(self.forward_features(x))


def _per_channel_a_log(t, shape):
    """Per-head A_log (nheads,) -> per-channel (d_inner,): head h's value for its P channels."""
    if t.dim() == 1 and len(shape) == 1 and t.numel() and shape[0] % t.numel() == 0:
        return t.repeat_interleave(shape[0] // t.numel())
    return None


interop.register_family(
    "pvmamba", PVMamba,
    tensor_rules=(interop.TensorRule(
        r"\.token_mixer\.A_log$", _per_channel_a_log, None,
        "checkpoints from before PVMamba commit ce327d3 store A per head (nheads,); the current code (and "
        "ours) has A per channel (d_inner,). Repeating each head's value over its P channels gives the "
        "same dA = dt * A (spec pvmamba.md section 6.5)"),),
    hints=((r"\.token_mixer\.(D|dt_bias|in_proj\.weight)$",
            "PVMamba-B exists with heads (2, 4, 8, 16) (base.yaml, our default) and (3, 6, 12, 24) (the "
            "upstream builder); build with the checkpoint's heads, e.g. "
            "model_kwargs {\"num_heads\": [3, 6, 12, 24]}"),))


def _build(name, num_classes=1000, img_size=224, **overrides):
    cfg = dict(MODEL_CFGS[name])
    cfg.update(overrides)
    return PVMamba(img_size=img_size, num_classes=num_classes, **cfg)


_CFG = dict(first_conv="patch_embed.conv1.conv", classifier="head")


@register_model(imagenet_cfg(**_CFG))
def pvmamba_tiny(num_classes=1000, img_size=224, **overrides):
    """PVMamba-T: E=64, depths 2-4-8-4, 24.29M params, 4.50 GFLOPs (fvcore) at 224."""
    return _build("pvmamba_tiny", num_classes, img_size, **overrides)


@register_model(imagenet_cfg(**_CFG))
def pvmamba_small(num_classes=1000, img_size=224, **overrides):
    """PVMamba-S: E=64, depths 3-4-21-5, 40.12M params, 7.44 GFLOPs (fvcore) at 224."""
    return _build("pvmamba_small", num_classes, img_size, **overrides)


@register_model(imagenet_cfg(**_CFG))
def pvmamba_base(num_classes=1000, img_size=224, **overrides):
    """PVMamba-B: E=96, depths 3-4-21-5, heads of base.yaml (2-4-8-16), 88.85M params, 16.24 GFLOPs."""
    return _build("pvmamba_base", num_classes, img_size, **overrides)
