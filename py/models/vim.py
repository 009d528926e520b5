"""Vision Mamba (Vim): a 24-layer bidirectional Mamba over patch tokens with a middle class token.

Spec: /work/shared/specs/dyvm.md, sections 1-2 (Vim, hustvl/Vim "midclstok" models).

    image --PatchEmbed(conv k=16 s=16)--> (B, M, d) --insert CLS at M//2, + pos_embed--> (B, M+1, d)
    24 x Block ("add -> RMSNorm -> BiMamba mixer", residual stream kept in fp32)
    RMSNorm_f(residual + hidden) --token at M//2--> head

The mixer is "bimamba v2": shared in_proj/out_proj, and one SSM branch (causal depthwise conv1d, x_proj,
dt_proj, A_log, D) per direction; the backward branch runs on the reversed sequence and the two outputs
are averaged. The selective scan itself is `py.ops.selective_scan`.

Parameter names follow the upstream checkpoints (`layers.{i}.mixer.conv1d_b.weight`, `norm_f.weight`, ...),
so `vim_{t,s,b}_midclstok` state dicts load with `create_model(..., pretrained=path)`.
DyVM (py/models/dyvm.py) builds on the classes here.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, RmsNorm, lecun_normal_, to_2tuple, trunc_normal_

from py.models import interop
from py.models.features import FeatureInfo, check_output_fmt, checkpointed, take_indices
from py.models.registry import imagenet_cfg, register_model

__all__ = ["VisionMamba", "BiMamba", "Block", "PatchEmbed", "VIM_CFGS", "resample_pos_embed", "vim_tiny", "vim_small",
           "vim_base", "vim_mnist"]

# ----------------------------------------------------------------------------------------------
# Configurations (spec 1.4). Every released size: patch 16, depth 24, N 16, expand 2, d_conv 4.
# ----------------------------------------------------------------------------------------------
VIM_DEFAULTS = dict(
    patch_size=16, stride=None, in_chans=3, depth=24, d_state=16, expand=2, d_conv=4, dt_rank="auto",
    norm_eps=1e-5, drop_rate=0.0, drop_path_rate=0.0, if_divide_out=True,
)
VIM_CFGS = {
    "vim_tiny": dict(embed_dim=192),
    "vim_small": dict(embed_dim=384),
    "vim_base": dict(embed_dim=768),
    # Not a published size: a small Vim for 28×28 grayscale digits, the trainer's default model, which
    # learns MNIST-5k on two CPU cores in minutes. 6×6 overlapping 8×8 patches at stride 4 (Vim's
    # `stride`) and expand 1: on the default recipe 98.1% val top-1 after 12 epochs at 1.5× the images/s
    # of 7×7 patches of 4 with expand 2 (97.2% after 9 epochs, where 8×8/4 with expand 2 had 97.9%).
    "vim_mnist": dict(embed_dim=64, depth=6, patch_size=8, stride=4, expand=1, in_chans=1, d_state=8),
}


# ----------------------------------------------------------------------------------------------
# Patch embedding
# ----------------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """Conv2d(in_chans, d, kernel=patch, stride=stride) then flatten to (B, M, d). No norm.

    grid = (img - patch) // stride + 1 per side; the image must tile exactly, i.e. img >= patch and
    (img - patch) % stride == 0, so that no pixel is silently dropped.
    """

    def __init__(self, img_size=224, patch_size=16, stride=16, in_chans=3, embed_dim=192):
        super().__init__()
        self.img_size, self.patch_size, self.stride = to_2tuple(img_size), to_2tuple(patch_size), to_2tuple(stride)
        for name, v in (("img_size", self.img_size), ("patch_size", self.patch_size), ("stride", self.stride)):
            if len(v) != 2 or not all(isinstance(s, int) and s > 0 for s in v):
                raise ValueError(f"{name} must be a positive int or (H, W) pair of positive ints, got {v!r}")
        for axis, img, p, s in zip("HW", self.img_size, self.patch_size, self.stride):
            if img < p or (img - p) % s != 0:
                raise ValueError(
                    f"img_size {self.img_size} does not fit the patch grid: each side needs img >= patch_size "
                    f"and (img - patch_size) % stride == 0 (patch_size={self.patch_size}, stride={self.stride}; "
                    f"side {axis}: img={img}, patch={p}, stride={s})")
        self.grid_size = tuple((img - p) // s + 1 for img, p, s in zip(self.img_size, self.patch_size, self.stride))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride)

    def forward(self, x):
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"expected input (B, C, {self.img_size[0]}, {self.img_size[1]}) matching the model's "
                             f"img_size (position embeddings are fixed; build the model with img_size=... for "
                             f"another size), got {tuple(x.shape)}")
        return self.proj(x).flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# Bidirectional Mamba mixer ("bimamba v2", spec 1.3 and 2)
# ----------------------------------------------------------------------------------------------
def _init_dt_proj(dt_proj, dt_rank, dt_min=1e-3, dt_max=1e-1, dt_init_floor=1e-4):
    """dt_proj.weight ~ U(-R^-1/2, R^-1/2); bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max]."""
    std = dt_rank ** -0.5
    with torch.no_grad():
        dt_proj.weight.uniform_(-std, std)
        dt = torch.exp(torch.rand_like(dt_proj.bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    dt_proj.bias._no_reinit = True


class BiMamba(nn.Module):
    """Mamba v1 mixer with a forward and a backward SSM branch (bimamba v2).

    forward(h (B, L, d), mask=None) -> (B, L, d). `mask` (B, L, 1) with 1 = kept, 0 = dropped is DyVM's
    masked branch (spec 3.6): x is zeroed before the conv and u after it; the backward branch gets the
    flipped mask. mask=None is plain Vim.
    """

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", if_divide_out=True,
                 scan_backend="auto"):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.if_divide_out = if_divide_out
        self.scan_backend = scan_backend
        di, R, N = self.d_inner, self.dt_rank, d_state

        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
        # The conv modules keep upstream's shapes/names; forward applies them causally via F.conv1d + left pad.
        self.conv1d = nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(di, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, di, bias=True)
        self.conv1d_b = nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1, bias=True)
        self.x_proj_b = nn.Linear(di, R + 2 * N, bias=False)
        self.dt_proj_b = nn.Linear(R, di, bias=True)
        a_log = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(di, 1)  # A = -[1..N] (S4D-real)
        self.A_log = nn.Parameter(a_log.clone())
        self.A_b_log = nn.Parameter(a_log.clone())
        self.D = nn.Parameter(torch.ones(di))
        self.D_b = nn.Parameter(torch.ones(di))
        for p in (self.A_log, self.A_b_log, self.D, self.D_b):
            p._no_weight_decay = True
        self.out_proj = nn.Linear(di, d_model, bias=False)
        _init_dt_proj(self.dt_proj, R)
        _init_dt_proj(self.dt_proj_b, R)

    def _branch_params(self, backward):
        if backward:
            return self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b
        return self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D

    def ssm_branch(self, xz, backward=False, mask=None):
        """One direction's conv1d + x_proj + dt_proj + selective scan (+ D, z gate).

        xz: (B, 2*di, L) in the branch's own order (already flipped for the backward branch);
        mask: None or (B, 1, L). Returns (B, di, L) (no out_proj).
        """
        from py.ops.selective_scan import selective_scan

        conv, x_proj, dt_proj, a_log, d_skip = self._branch_params(backward)
        x, z = xz.chunk(2, dim=1)
        if mask is not None:
            x = x * mask
        u = F.silu(F.conv1d(F.pad(x, (self.d_conv - 1, 0)), conv.weight, conv.bias, groups=self.d_inner))
        if mask is not None:
            u = u * mask
        x_dbl = x_proj(u.transpose(1, 2))                                      # (B, L, R + 2N)
        dt, b_ssm, c_ssm = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2).contiguous()     # bias goes in as delta_bias
        return selective_scan(
            u.contiguous(), delta, -torch.exp(a_log.float()),
            b_ssm.transpose(1, 2).contiguous(), c_ssm.transpose(1, 2).contiguous(),
            D=d_skip.float(), z=z.contiguous(), delta_bias=dt_proj.bias.float(), delta_softplus=True,
            backend=self.scan_backend)

    def combine(self, y_f, y_b_flipped):
        """(y_f + flip(y_b)) / 2 -> out_proj. Both (B, di, L); y_b is in the reversed order."""
        y = y_f + y_b_flipped.flip(-1)
        if self.if_divide_out:
            y = y / 2
        return self.out_proj(y.transpose(1, 2))

    def forward(self, h, mask=None):
        xz = self.in_proj(h).transpose(1, 2)                                   # (B, 2di, L)
        mask = None if mask is None else mask.transpose(1, 2).to(xz.dtype)    # (B, 1, L)
        y_f = self.ssm_branch(xz, backward=False, mask=mask)
        y_b = self.ssm_branch(xz.flip(-1), backward=True, mask=None if mask is None else mask.flip(-1))
        return self.combine(y_f, y_b)


# ----------------------------------------------------------------------------------------------
# Residual block: Add -> RMSNorm -> Mixer (spec 1.2)
# ----------------------------------------------------------------------------------------------
class Block(nn.Module):
    """(hidden, residual) -> (mixer(RMSNorm(residual')), residual') with residual' = residual + DropPath(hidden).

    Layer 0 receives residual=None and uses residual' = hidden. The residual stream is kept in fp32.
    """

    def __init__(self, dim, mixer, drop_path=0.0, norm_eps=1e-5):
        super().__init__()
        self.mixer = mixer
        self.norm = RmsNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def add_norm(self, hidden, residual):
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        residual = residual.float()
        return self.norm(residual.to(self.norm.weight.dtype)), residual

    def forward(self, hidden, residual=None, mask=None):
        h, residual = self.add_norm(hidden, residual)
        return self.mixer(h, mask=mask), residual


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
class VisionMamba(nn.Module):
    """Vim with a middle class token (spec 1.1-1.5).

    forward_features(x) -> normed token sequence (B, M+1, d), class token at index M//2;
    forward_head(x, pre_logits=False) -> logits (B, num_classes) from that token.
    forward_intermediates(x, indices, ...) (py.models.features): the residual stream residual + hidden
    after each layer in `indices`, class token removed, as (B, d, gh, gw) maps (or NLC tokens).
    features_only=True: forward(x) returns forward_intermediates(x, out_indices, intermediates_only=True)
    (default taps: every depth/4-th layer, e.g. 5/11/17/23, the simple pyramid's taps), all at the
    single patch stride.
    """

    def __init__(self, img_size=224, patch_size=16, stride=None, in_chans=3, num_classes=1000, embed_dim=192,
                 depth=24, d_state=16, expand=2, d_conv=4, dt_rank="auto", norm_eps=1e-5, drop_rate=0.0,
                 drop_path_rate=0.0, if_divide_out=True, features_only=False, out_indices=None,
                 scan_backend="auto", mixer_layer=BiMamba, block_layer=Block):
        super().__init__()
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        stride = patch_size if stride is None else stride
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.features_only = features_only
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, stride, in_chans, embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.grid_size = self.patch_embed.grid_size
        self.cls_pos = self.num_patches // 2                      # 98 at 224/16
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)

        # layer i uses ([0] + linspace(0, rate, depth))[i]; the last linspace value is never used.
        dpr = [0.0] + torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.layers = nn.ModuleList([
            block_layer(embed_dim, mixer_layer(embed_dim, d_state=d_state, d_conv=d_conv, expand=expand,
                                               dt_rank=dt_rank, if_divide_out=if_divide_out,
                                               scan_backend=scan_backend),
                        drop_path=dpr[i], norm_eps=norm_eps)
            for i in range(depth)])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = RmsNorm(embed_dim, eps=norm_eps)

        reduction = self.patch_embed.stride[0]
        if features_only:
            if out_indices is None:
                out_indices = tuple(range(depth // 4 - 1, depth, depth // 4)) if depth >= 4 else (depth - 1,)
            self.out_indices = tuple(take_indices(depth, out_indices)[0])
            self.num_classes = num_classes = 0
        else:
            self.out_indices = tuple(range(depth))
        self.feature_info = FeatureInfo([dict(num_chs=embed_dim, reduction=reduction, module=f"layers.{i}")
                                         for i in range(depth)], self.out_indices)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    # -- init (spec 1.5, 2.3) ------------------------------------------------------------------
    def _init_weights(self):
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
        for layer in self.layers:
            out_proj = layer.mixer.out_proj
            nn.init.kaiming_uniform_(out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                out_proj.weight /= math.sqrt(self.depth)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def layer_ids(self):
        """{parameter name: layer id} for layer-wise lr decay, numbered as BEiT's and Vim's seg/det
        fine-tuning code intends: patch embedding, class token and position embeddings 0, layer i
        i + 1, the final norm and head depth + 1 (py.models.features.layer_ids)."""
        return {name: self._layer_id(name) for name, _ in self.named_parameters()}

    def _layer_id(self, name):
        parts = name.split(".")
        if parts[0] in ("patch_embed", "cls_token", "pos_embed"):
            return 0
        if parts[0] == "layers":
            return int(parts[1]) + 1
        return len(self.layers) + 1

    def get_classifier(self):
        return self.head

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        """Recompute each layer in the backward instead of keeping its activations."""
        self.grad_checkpointing = enable

    def run_layer(self, layer, hidden, residual, *args, **kwargs):
        """layer(hidden, residual, ...), checkpointed when grad checkpointing is on and training."""
        return checkpointed(lambda h, r: layer(h, r, *args, **kwargs), hidden, residual,
                            enabled=self.grad_checkpointing and self.training)

    def reset_classifier(self, num_classes, global_pool=None):
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # -- forward ---------------------------------------------------------------------------------
    def embed(self, x):
        """(B, C, H, W) -> (B, M+1, d): patches, class token inserted at M//2, plus pos_embed."""
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :self.cls_pos], cls, x[:, self.cls_pos:]], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def final_norm(self, hidden, residual):
        residual = residual + self.drop_path(hidden)
        return self.norm_f(residual.to(getattr(self.norm_f, "weight", residual).dtype))

    def forward_features(self, x):
        hidden, residual = self.embed(x), None
        for layer in self.layers:
            hidden, residual = self.run_layer(layer, hidden, residual)
        return self.final_norm(hidden, residual)

    def forward_head(self, x, pre_logits=False, cls_pos=None):
        """x: (B, L, d) from forward_features (or already pooled (B, d)). The class token sits at
        (L - 1) // 2 unless `cls_pos` (int or (B,) tensor) says otherwise."""
        if x.dim() == 3:
            pos = (x.shape[1] - 1) // 2 if cls_pos is None else cls_pos
            x = x[:, pos] if isinstance(pos, int) else x[torch.arange(x.shape[0], device=x.device), pos]
        return x if pre_logits else self.head(x)

    def tap(self, hidden, residual, norm, cls_pos, output_fmt, dtype):
        """One intermediate: (residual + hidden), through norm_f if `norm`, split into (patch map, class
        token) with the patches as (B, d, gh, gw) for NCHW or (B, M, d) for NLC."""
        t = residual + hidden
        t = self.norm_f(t.to(getattr(self.norm_f, "weight", t).dtype)) if norm else t
        t = t.to(dtype)
        cls = t[:, cls_pos]
        t = torch.cat([t[:, :cls_pos], t[:, cls_pos + 1:]], dim=1)
        if output_fmt == "NCHW":
            t = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *self.grid_size)
        return t, cls

    def forward_intermediates(self, x, indices=None, return_prefix_tokens=False, norm=False, stop_early=False,
                              output_fmt="NCHW", intermediates_only=False):
        """The residual stream after each layer in `indices` (py.models.features), class token removed
        (return_prefix_tokens=True: (map, class token) pairs); norm=True applies norm_f to each.
        Returns the list, or (forward_features(x), list)."""
        check_output_fmt(output_fmt, ("NCHW", "NLC"))
        take, max_index = take_indices(len(self.layers), indices)
        hidden, residual = self.embed(x), None
        intermediates = []
        for i, layer in enumerate(self.layers[:max_index + 1] if stop_early else self.layers):
            hidden, residual = self.run_layer(layer, hidden, residual)
            if i in take:
                t, cls = self.tap(hidden, residual, norm, self.cls_pos, output_fmt, x.dtype)
                intermediates.append((t, cls[:, None]) if return_prefix_tokens else t)
        if intermediates_only:
            return intermediates
        return self.final_norm(hidden, residual), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True):
        """Drops the layers after the last of `indices` (and the head, norm_f); returns the kept indices."""
        take, max_index = take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward(self, x):
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True)
        return self.forward_head(self.forward_features(x))

    # -- checkpoint filter (py.models.weights calls it when adapting weights for fine-tuning) ------
    def adapt_checkpoint(self, state, notices):
        """Resamples a checkpoint's position embeddings made for another patch grid to this one."""
        pe = state.get("pos_embed")
        if pe is not None and pe.dim() == 3 and pe.shape[-1] == self.embed_dim and pe.shape != self.pos_embed.shape:
            state["pos_embed"] = resample_pos_embed(pe, self.grid_size)
            old = int(round(math.sqrt(pe.shape[1] - 1)))
            notices.append(f"pos_embed resampled from a {old}x{old} to a {self.grid_size[0]}x{self.grid_size[1]} "
                           "patch grid (bicubic; class-token entry kept)")
        return state


interop.register_family("vim", VisionMamba)  # official keys are ours (py/models/interop.py)


def resample_pos_embed(pos_embed, grid_size):
    """(1, M0 + 1, d) position embeddings of a square M0 = g0*g0 grid, class token at M0 // 2 (Vim's
    middle token), to `grid_size` (h, w): grid part bicubic-interpolated, class entry moved to M // 2."""
    m0 = pos_embed.shape[1] - 1
    g0 = int(round(math.sqrt(m0)))
    if g0 * g0 != m0:
        raise ValueError(f"pos_embed has {m0} patch positions, not a square grid: cannot resample it")
    h, w = grid_size
    cls = pos_embed[:, m0 // 2:m0 // 2 + 1]
    grid = torch.cat([pos_embed[:, :m0 // 2], pos_embed[:, m0 // 2 + 1:]], dim=1)
    grid = grid.reshape(1, g0, g0, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=(h < g0 or w < g0))
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(pos_embed.dtype)
    mid = (h * w) // 2
    return torch.cat([grid[:, :mid], cls, grid[:, mid:]], dim=1)


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------
def _create_vim(variant, num_classes=1000, img_size=224, **overrides):
    cfg = dict(VIM_DEFAULTS, **VIM_CFGS[variant])
    cfg.update(overrides)
    return VisionMamba(img_size=img_size, num_classes=num_classes, **cfg)


@register_model(imagenet_cfg(first_conv="patch_embed.proj"))
def vim_tiny(num_classes=1000, img_size=224, **overrides):
    """Vim-T: d 192, 24 layers, 7,148,008 params."""
    return _create_vim("vim_tiny", num_classes, img_size, **overrides)


@register_model(imagenet_cfg(first_conv="patch_embed.proj"))
def vim_small(num_classes=1000, img_size=224, **overrides):
    """Vim-S: d 384, 24 layers, 25,796,584 params."""
    return _create_vim("vim_small", num_classes, img_size, **overrides)


@register_model(imagenet_cfg(first_conv="patch_embed.proj"))
def vim_base(num_classes=1000, img_size=224, **overrides):
    """Vim-B: d 768, 24 layers, 97,598,440 params."""
    return _create_vim("vim_base", num_classes, img_size, **overrides)


@register_model(imagenet_cfg(input_size=(1, 28, 28), mean=(0.1307,), std=(0.3081,), crop_pct=1.0,
                             interpolation="bilinear", num_classes=10, first_conv="patch_embed.proj"))
def vim_mnist(num_classes=10, img_size=28, **overrides):
    """A small Vim for 28×28 digits: d 64, 6 layers, N 8, expand 1, 8×8 patches at stride 4 (6×6 tokens),
    1 input channel (not published)."""
    return _create_vim("vim_mnist", num_classes, img_size, **overrides)
