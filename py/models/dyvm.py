"""Dynamic Vision Mamba (DyVM) on Vim: token pruning with Mamba-aware rearrangement + dynamic SSM-branch
selection, and the DyVM training loss.

Spec: /work/shared/specs/dyvm.md, sections 3-4 (NUS-HPC-AI-Lab/DyVM, Vim variant).

Token pruning (immediately before layers `pruning_loc` = 6/12/18, stage s keeps ρ^s of the M patches):
  * a score predictor per stage (PredictorLG: local + policy-masked global features -> log p(keep), p(drop))
    reads the residual-stream value hidden + residual of the patch tokens;
  * training: Gumbel-softmax (hard, straight-through) decisions, the sequence keeps its length M+1 and is
    **rearranged** to [kept with the class token in their middle] ++ [dropped]; dropped tokens are masked in
    the SSM input (x before the conv, u after it). Causality of the forward branch and the zero state of the
    backward branch then make the kept outputs equal to physically pruning them;
  * inference: top-K_s (K_s = int(ρ^s·M)) of the keep score, indices sorted ascending, tokens gathered,
    class token re-inserted at K_s // 2: lengths 197 -> 138 -> 97 -> 68 at ρ = 0.7.
Block selection: each layer's `block_head` (Linear(2·di, 2) on in_proj's output at the class token) gives
one Gumbel-sigmoid gate per image per direction. Training computes both branches and multiplies by the
gates; inference runs each branch only on the images whose gate is on (and skips it if none is).

Modes and outputs:
  * eval: forward(x) -> logits; `last_block_policy` keeps the latest (depth, B, 1, 2) gates for logging.
  * train: forward(x) -> DyVMOutput(logits, tokens, token_policy, pred_decisions, current_pos,
    block_policy), which `DyVMLoss` consumes.
`keep_ratio` (ρ) and `block_ratio` (β, the block-keep target of the loss) are constructor args and plain
attributes, so ρ can be changed on a trained model before inference. `dynamic_blocks=False` forces every
branch on (token pruning only).
"""
import contextlib
import warnings
from typing import List, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.loss import SoftTargetCrossEntropy

from py.models import interop
from py.models.features import check_output_fmt, take_indices
from py.models.registry import imagenet_cfg, register_model
from py.models.vim import VIM_CFGS, VIM_DEFAULTS, BiMamba, Block, VisionMamba

__all__ = ["DyVM", "DyVMLoss", "DyVMOutput", "DynamicBiMamba", "PredictorLG", "gumbel_sigmoid",
           "DYVM_CFGS", "dyvm_vim_tiny", "dyvm_vim_small", "dyvm_vim_base", "dyvm_vim_mnist"]

# ----------------------------------------------------------------------------------------------
# Configurations (spec 3.1, 4.3, 6.2): Vim backbone + ρ (token keep ratio per stage) and β.
# ----------------------------------------------------------------------------------------------
DYVM_DEFAULTS = dict(pruning_loc=(6, 12, 18), block_head_bias=5.0, dynamic_blocks=True)
DYVM_CFGS = {
    "dyvm_vim_tiny": dict(VIM_CFGS["vim_tiny"], keep_ratio=0.9, block_ratio=0.8),
    "dyvm_vim_small": dict(VIM_CFGS["vim_small"], keep_ratio=0.7, block_ratio=0.8),
    "dyvm_vim_base": dict(VIM_CFGS["vim_base"], keep_ratio=0.7, block_ratio=0.7),
    # Not published: DyVM on vim_mnist (6 layers, 6×6 patches), pruning before layers 2 and 4.
    "dyvm_vim_mnist": dict(VIM_CFGS["vim_mnist"], keep_ratio=0.7, block_ratio=0.8, pruning_loc=(2, 4)),
}


class DyVMOutput(NamedTuple):
    """What DyVM returns in training mode (spec 3.3)."""
    logits: torch.Tensor            # (B, num_classes)
    tokens: torch.Tensor            # (B, M, d) final normed patch tokens, in rearranged order
    token_policy: torch.Tensor      # (B, M, 1) final keep mask (detached), same order as tokens
    pred_decisions: List[torch.Tensor]  # per stage (B, M) keep decisions (straight-through)
    current_pos: torch.Tensor       # (B, M) original patch index of each slot
    block_policy: torch.Tensor      # (depth, B, 1, 2) branch gates (forward, backward)


# ----------------------------------------------------------------------------------------------
# Gates and token bookkeeping
# ----------------------------------------------------------------------------------------------
def gumbel_sigmoid(logits, tau=2.0, hard=True, threshold=0.5, training=True):
    """Independent Gumbel-sigmoid per entry: σ((logit + g1 − g2)/τ) in training, σ(logit) in eval.

    hard=True returns exact {0, 1} values with straight-through gradients to the soft value.
    """
    if training:
        g1 = -torch.empty_like(logits).exponential_().log()
        g2 = -torch.empty_like(logits).exponential_().log()
        soft = torch.sigmoid((logits + g1 - g2) / tau)
    else:
        soft = torch.sigmoid(logits)
    if not hard:
        return soft
    hard_val = (soft > threshold).to(soft.dtype)
    return (hard_val - soft.detach()) + soft


def split_cls(x, cls_pos):
    """x (B, L, C), cls_pos int or (B,) long -> (cls (B, 1, C), other (B, L-1, C))."""
    if isinstance(cls_pos, int):
        return x[:, cls_pos:cls_pos + 1], torch.cat([x[:, :cls_pos], x[:, cls_pos + 1:]], dim=1)
    b, L, c = x.shape
    idx = torch.arange(L - 1, device=x.device).expand(b, -1)
    idx = idx + (idx >= cls_pos[:, None]).long()
    other = x.gather(1, idx[..., None].expand(-1, -1, c))
    cls = x.gather(1, cls_pos.view(b, 1, 1).expand(-1, 1, c))
    return cls, other


def insert_cls(cls, other, cls_pos):
    """Inverse of split_cls: cls (B, 1, C), other (B, M, C) -> (B, M+1, C) with cls at cls_pos."""
    if isinstance(cls_pos, int):
        return torch.cat([other[:, :cls_pos], cls, other[:, cls_pos:]], dim=1)
    b, m, c = other.shape
    j = torch.arange(m + 1, device=other.device).expand(b, -1)
    src = (j - (j > cls_pos[:, None]).long()).clamp(max=m - 1)
    out = other.gather(1, src[..., None].expand(-1, -1, c))
    return torch.where((j == cls_pos[:, None])[..., None], cls.to(out.dtype), out)


def batch_gather(x, idx):
    """x (B, N, C), idx (B, K) -> (B, K, C)."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


# ----------------------------------------------------------------------------------------------
# Score predictor (spec 3.2)
# ----------------------------------------------------------------------------------------------
class PredictorLG(nn.Module):
    """Per-token keep/drop log-probabilities from local features + a policy-masked global mean."""

    def __init__(self, dim):
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
            nn.Linear(dim // 4, 2), nn.LogSoftmax(dim=-1))

    def forward(self, x, policy):
        """x (B, N, d), policy (B, N, 1) in {0, 1} -> (B, N, 2) log-probs, index 0 = keep."""
        x = self.in_conv(x)
        half = x.shape[-1] // 2
        local_x = x[..., :half]
        global_x = (x[..., half:] * policy).sum(1, keepdim=True) / (policy.sum(1, keepdim=True) + 1)
        return self.out_conv(torch.cat([local_x, global_x.expand_as(local_x)], dim=-1))


# ----------------------------------------------------------------------------------------------
# Dynamic mixer and block (spec 4.1-4.2)
# ----------------------------------------------------------------------------------------------
class DynamicBiMamba(BiMamba):
    """BiMamba plus a per-layer `block_head` deciding, per image, which direction's SSM branch runs.

    forward(h, mask=None, cls_pos=int|(B,), dynamic=True) -> (out (B, L, d), gates (B, 1, 2)).
    """

    def __init__(self, d_model, **kwargs):
        super().__init__(d_model, **kwargs)
        self.block_head = nn.Linear(2 * self.d_inner, 2, bias=True)
        self.static_gates = False  # DyVM.export_mode(): a torch.cond per branch instead of `nonzero`

    def gates(self, xz, cls_pos):
        b = xz.shape[0]
        feat = xz[:, :, cls_pos] if isinstance(cls_pos, int) else xz[torch.arange(b, device=xz.device), :, cls_pos]
        return gumbel_sigmoid(self.block_head(feat), tau=2.0, hard=True, threshold=0.5, training=self.training)

    def _run_subset(self, xz, on, backward, mask):
        """Runs a branch only on the images with gate `on` (B,) set; zeros elsewhere (inference)."""
        if self.static_gates or torch.compiler.is_compiling():
            return self._run_cond(xz, on, backward, mask)
        idx = on.nonzero().squeeze(1)
        if idx.numel() == xz.shape[0]:
            return self.ssm_branch(xz, backward, mask)
        out = xz.new_zeros(xz.shape[0], self.d_inner, xz.shape[-1])
        if idx.numel() == 0:
            return out
        y = self.ssm_branch(xz[idx], backward, None if mask is None else mask[idx])
        return out.index_copy(0, idx, y.to(out.dtype))

    def _run_cond(self, xz, on, backward, mask):
        """The same result, traceable (torch.export, torch.compile): the branch runs under torch.cond
        when any image's gate is on, on the whole batch, and the rows of gated-off images are zeroed
        (so at batch 1 a skipped branch is not computed in the graph either)."""
        def run(xz):
            y = self.ssm_branch(xz, backward, mask).to(xz.dtype)
            return torch.where(on[:, None, None], y, y.new_zeros(()))

        skip = lambda xz: xz.new_zeros(xz.shape[0], self.d_inner, xz.shape[-1])
        return torch.cond(on.any(), run, skip, (xz,))

    def forward(self, h, mask=None, cls_pos=0, dynamic=True):
        xz = self.in_proj(h).transpose(1, 2)                                   # (B, 2di, L)
        mask = None if mask is None else mask.transpose(1, 2).to(xz.dtype)    # (B, 1, L)
        mask_b = None if mask is None else mask.flip(-1)
        q = self.gates(xz, cls_pos)                                            # (B, 2)
        if not dynamic:
            q = torch.ones_like(q)
        if self.training:
            # both branches always computed; gating after the scan (conv bias and D·u would survive
            # zeroing the input)
            y_f = self.ssm_branch(xz, False, mask) * q[:, 0, None, None]
            y_b = self.ssm_branch(xz.flip(-1), True, mask_b) * q[:, 1, None, None]
        else:
            y_f = self._run_subset(xz, q[:, 0] > 0.5, False, mask)
            y_b = self._run_subset(xz.flip(-1), q[:, 1] > 0.5, True, mask_b)
        return self.combine(y_f, y_b), q[:, None, :]


class DynamicBlock(Block):
    """Block whose mixer also takes cls_pos and returns its gates."""

    def forward(self, hidden, residual=None, mask=None, cls_pos=0, dynamic=True):
        h, residual = self.add_norm(hidden, residual)
        out, q = self.mixer(h, mask=mask, cls_pos=cls_pos, dynamic=dynamic)
        return out, residual, q


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
class DyVM(VisionMamba):
    """Vim with token pruning before `pruning_loc` and per-direction dynamic block selection."""

    def __init__(self, keep_ratio=0.7, block_ratio=0.8, pruning_loc=(6, 12, 18), block_head_bias=5.0,
                 dynamic_blocks=True, **kwargs):
        super().__init__(mixer_layer=DynamicBiMamba, block_layer=DynamicBlock, **kwargs)
        self.pruning_loc = tuple(int(i) for i in pruning_loc)
        if any(not 0 < i < self.depth for i in self.pruning_loc) or list(self.pruning_loc) != sorted(
                set(self.pruning_loc)):
            raise ValueError(f"pruning_loc must be strictly increasing layer indices in [1, depth) = "
                             f"[1, {self.depth}), got {pruning_loc}")
        self.keep_ratio = keep_ratio
        self.block_ratio = block_ratio
        self.dynamic_blocks = dynamic_blocks
        self._check_ratios()
        self.score_predictor = nn.ModuleList([PredictorLG(self.embed_dim) for _ in self.pruning_loc])
        for m in self.score_predictor.modules():        # DyVM utils._init_weights for the new modules
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.reset_block_heads(block_head_bias)
        self.last_block_policy = None
        self._reset_gate_log()

    def _reset_gate_log(self):
        # Tensors, not Python numbers: torch.compile guards on a number's value, so a count that grows with
        # every call would recompile the model on every call.
        self._eval_gate_sum, self._eval_gate_count = torch.zeros(()), torch.zeros((), dtype=torch.int64)

    def load_pretrained_vim(self, checkpoint, block_head_bias=5.0):
        """Initialises the backbone from a Vim (or DyVM) checkpoint file or state dict (the DyVM
        recipe): predictors keep their init, every block_head is reset to w = 0, b = block_head_bias."""
        from py.models import weights
        if isinstance(checkpoint, dict):
            weights.load_state(self, checkpoint, adapt=True, source="Vim state dict")
        else:
            weights.load_into(self, checkpoint, adapt=True)
        self.reset_block_heads(block_head_bias)
        return self

    def adapt_checkpoint(self, state, notices):
        """Vim's filter, then: score predictors and block heads absent from the checkpoint (a plain Vim
        backbone, DyVM's starting point) keep this model's init."""
        state = super().adapt_checkpoint(state, notices)
        fresh = [k for k in self.state_dict() if k not in state and
                 (k.startswith("score_predictor.") or ".block_head." in k)]
        if fresh:
            own = self.state_dict()
            state.update({k: own[k] for k in fresh})
            notices.append(f"{len(fresh)} DyVM predictor/block-head tensors are not in the checkpoint "
                           "(a Vim backbone): they keep their initialisation")
        return state

    def build_loss(self, teacher=None, **kwargs):
        """The DyVM training loss with this model's ρ^s targets and β (see DyVMLoss)."""
        return DyVMLoss.from_model(self, teacher, **kwargs)

    def keep_ratio_report(self):
        """Achieved keep ratios since the last call, from eval-mode forwards: the mean branch-gate value
        ("block_keep_ratio") and the fixed inference token ratio of the last stage."""
        report = {}
        count = int(self._eval_gate_count)
        if count:
            report["block_keep_ratio"] = float(self._eval_gate_sum) / count
        if self.pruning_loc:
            report["token_keep_ratio"] = self.num_keep(len(self.pruning_loc) - 1) / self.num_patches
        self._reset_gate_log()
        return report

    def _layer_id(self, name):
        # Score predictor k decides which tokens layer pruning_loc[k] sees: it shares that layer's id.
        parts = name.split(".")
        if parts[0] == "score_predictor":
            return self.pruning_loc[int(parts[1])] + 1
        return super()._layer_id(name)

    def reset_block_heads(self, bias=5.0):
        """w = 0, b = bias for every block_head (DyVM main.py after loading the Vim checkpoint)."""
        for layer in self.layers:
            nn.init.zeros_(layer.mixer.block_head.weight)
            nn.init.constant_(layer.mixer.block_head.bias, bias)

    def _check_ratios(self):
        if not 0 < float(self.keep_ratio) <= 1:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        if not 0 <= float(self.block_ratio) <= 1:
            raise ValueError(f"block_ratio must be in [0, 1], got {self.block_ratio!r}")
        if int(self.keep_ratio ** len(self.pruning_loc) * self.num_patches) < 1:
            raise ValueError(f"keep_ratio {self.keep_ratio} keeps no patch of {self.num_patches} at the last "
                             f"stage; int(keep_ratio**{len(self.pruning_loc)} * num_patches) must be >= 1")

    @property
    def token_keep_ratios(self):
        """Cumulative per-stage targets [ρ, ρ², ρ³, ...] (fractions of the original M)."""
        return [self.keep_ratio ** (s + 1) for s in range(len(self.pruning_loc))]

    def num_keep(self, stage):
        """Patches kept at inference after `stage` (0-based): int(ρ^(s+1) · M)."""
        return max(1, int(self.token_keep_ratios[stage] * self.num_patches))

    def sample_keep(self, logp, policy, stage):
        """Training-time keep decisions (B, N, 1): hard Gumbel-softmax, a dropped token stays dropped.
        (Tests replace this with a deterministic rule.)"""
        return F.gumbel_softmax(logp, tau=1.0, hard=True)[..., 0:1] * policy

    # -- training path (spec 3.3) ------------------------------------------------------------------
    def _prune_train(self, stage, hidden, residual, st):
        cls_h, other_h = split_cls(hidden, st["cls_pos"])
        cls_r, other_r = split_cls(residual, st["cls_pos"])
        policy = st["token_policy"]
        logp = self.score_predictor[stage](other_h + other_r, policy.to(other_h.dtype))
        keep = self.sample_keep(logp, policy, stage)
        st["pred_decisions"].append(keep.squeeze(-1))
        kept = keep.squeeze(-1) > 0.5
        order = torch.argsort((~kept).to(torch.int32), dim=1, stable=True)   # kept first, both ascending
        policy = batch_gather(keep, order)
        other_h, other_r = batch_gather(other_h, order), batch_gather(other_r, order)
        st["current_pos"] = st["current_pos"].gather(1, order)
        st["cls_pos"] = kept.sum(1) // 2
        st["token_policy"] = policy
        st["mask"] = insert_cls(torch.ones_like(policy[:, :1]), policy, st["cls_pos"])
        return insert_cls(cls_h, other_h, st["cls_pos"]), insert_cls(cls_r, other_r, st["cls_pos"])

    # -- inference path (spec 3.4) -----------------------------------------------------------------
    def _prune_eval(self, stage, hidden, residual, st):
        cls_pos = st["cls_pos"]
        cls_h, other_h = split_cls(hidden, cls_pos)
        cls_r, other_r = split_cls(residual, cls_pos)
        policy = torch.ones_like(other_h[..., :1])
        logp = self.score_predictor[stage](other_h + other_r, policy)
        k = min(self.num_keep(stage), other_h.shape[1])
        idx = logp[..., 0].topk(k, dim=1).indices.sort(dim=1).values
        st["current_pos"] = st["current_pos"].gather(1, idx)
        st["cls_pos"] = k // 2
        hidden = insert_cls(cls_h, batch_gather(other_h, idx), k // 2)
        residual = insert_cls(cls_r, batch_gather(other_r, idx), k // 2)
        return hidden, residual

    def _run_layers(self, x, layers, on_prune=None):
        """Embeds x and runs `layers`, pruning before each pruning_loc layer; yields (layer index, hidden,
        residual, bookkeeping) after each layer. on_prune(hidden, residual, st) sees the tokens just
        before a pruning step."""
        self._check_ratios()
        hidden, residual = self.embed(x), None
        b, m = hidden.shape[0], self.num_patches
        st = dict(cls_pos=self.cls_pos, mask=None, pred_decisions=[], gates=[],
                  current_pos=torch.arange(m, device=hidden.device).expand(b, -1),
                  token_policy=hidden.new_ones(b, m, 1), seq_lens=[m + 1], cls_positions=[self.cls_pos])
        if self.training:
            st["cls_pos"] = torch.full((b,), self.cls_pos, dtype=torch.long, device=hidden.device)
        for i, layer in enumerate(layers):
            if i in self.pruning_loc:
                if on_prune is not None:
                    on_prune(hidden, residual, st)
                stage = self.pruning_loc.index(i)
                prune = self._prune_train if self.training else self._prune_eval
                hidden, residual = prune(stage, hidden, residual, st)
                st["seq_lens"].append(hidden.shape[1])
                st["cls_positions"].append(st["cls_pos"])
            hidden, residual, q = self.run_layer(layer, hidden, residual, mask=st["mask"], cls_pos=st["cls_pos"],
                                                 dynamic=self.dynamic_blocks)
            st["gates"].append(q)
            yield i, hidden, residual, st

    def forward_features(self, x, return_aux=False):
        """Normed token sequence; in training (B, M+1, d) in the rearranged layout with per-image
        class positions, at inference (B, K+1, d) with the class token at K // 2. return_aux=True also
        returns the bookkeeping dict (cls_pos, token_policy, pred_decisions, current_pos, block_policy,
        seq_lens, cls_positions)."""
        for _, hidden, residual, st in self._run_layers(x, self.layers):
            pass
        st["block_policy"] = torch.stack(st.pop("gates"))                      # (depth, B, 1, 2)
        self.last_block_policy = st["block_policy"].detach()
        if not self.training:
            self._eval_gate_sum = self._eval_gate_sum + self.last_block_policy.float().sum()   # no host sync
            self._eval_gate_count = self._eval_gate_count + self.last_block_policy.numel()
        tokens = self.final_norm(hidden, residual)
        if not return_aux:
            return tokens
        st.pop("mask")
        return tokens, st

    def forward_intermediates(self, x, indices=None, return_prefix_tokens=False, norm=False, stop_early=False,
                              output_fmt="NCHW", intermediates_only=False):
        """Full dense maps despite pruning, as DyVM's segmentation backbone makes them (spec dyvm.md 7.3):
        a pruned token keeps the value it had when it was pruned, and every tap scatters the live tokens
        back to their spatial positions, so each intermediate is (B, d, gh, gw) like Vim's. Same
        arguments and returns as VisionMamba.forward_intermediates."""
        check_output_fmt(output_fmt, ("NCHW", "NLC"))
        take, max_index = take_indices(len(self.layers), indices)
        b, m = x.shape[0], self.num_patches
        frozen = None  # (B, M, d): the last value of every patch token, in spatial order

        def scatter_live(hidden, residual, st, norm):
            nonlocal frozen
            cls_pos = st["cls_pos"]
            t = residual + hidden
            t = self.norm_f(t.to(getattr(self.norm_f, "weight", t).dtype)) if norm else t
            cls, other = split_cls(t, cls_pos)
            pos, n = st["current_pos"], other.shape[1]
            live = st["token_policy"][:, :n] > 0  # training: dropped tokens stay frozen
            if frozen is None:
                frozen = other.new_zeros(b, m, other.shape[-1])
            base = frozen.gather(1, pos[..., None].expand(-1, -1, other.shape[-1]))
            out = frozen.scatter(1, pos[..., None].expand(-1, -1, other.shape[-1]), torch.where(live, other, base))
            return out, cls

        def on_prune(hidden, residual, st):
            nonlocal frozen
            frozen, _ = scatter_live(hidden, residual, st, norm)

        intermediates, last = [], None
        layers = self.layers[:max_index + 1] if stop_early else self.layers
        for i, hidden, residual, st in self._run_layers(x, layers, on_prune):
            last = hidden, residual, st
            if i in take:
                t, cls = scatter_live(hidden, residual, st, norm)
                t = t.to(x.dtype)
                if output_fmt == "NCHW":
                    t = t.transpose(1, 2).reshape(b, t.shape[2], *self.grid_size)
                intermediates.append((t, cls.to(x.dtype)) if return_prefix_tokens else t)
        if intermediates_only:
            return intermediates
        hidden, residual, _ = last
        return self.final_norm(hidden, residual), intermediates

    @contextlib.contextmanager
    def export_mode(self):
        """Graph capture (torch.export): the inference path's data-dependent branch choice (`nonzero`)
        becomes a torch.cond per branch (as under torch.compile), and the gate log this forward keeps on the model
        is restored afterwards, so no traced value leaks out of the export."""
        saved = {k: getattr(self, k) for k in ("last_block_policy", "_eval_gate_sum", "_eval_gate_count")}
        mixers = [m for m in self.modules() if isinstance(m, DynamicBiMamba)]
        for m in mixers:
            m.static_gates = True
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The tensor attributes .* were assigned during export")
                yield self
        finally:
            for m in mixers:
                m.static_gates = False
            for k, v in saved.items():
                setattr(self, k, v)

    def forward(self, x):
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True)
        tokens, st = self.forward_features(x, return_aux=True)
        logits = self.forward_head(tokens, cls_pos=st["cls_pos"])
        if not self.training:
            return logits
        _, other_t = split_cls(tokens, st["cls_pos"])
        return DyVMOutput(logits, other_t, st["token_policy"].detach(), st["pred_decisions"],
                          st["current_pos"], st["block_policy"])


interop.register_family(
    "dyvm", DyVM,
    key_rules=(interop.KeyRule("score_predictors.{rest}", "score_predictor.{rest}",
                               "DyVM names its PredictorLG list `score_predictors`; ours is `score_predictor`"),),
    hints=((r"^(score_predictor\.|layers\.\d+\.mixer\.block_head\.)",
            "if this is a plain Vim checkpoint (no score predictors or block heads), initialise DyVM "
            "from it with DyVM.load_pretrained_vim(path) (the DyVM recipe) instead"),))


# ----------------------------------------------------------------------------------------------
# Loss (spec 4.3)
# ----------------------------------------------------------------------------------------------
class DyVMLoss(nn.Module):
    """L = clf·CE + w_tok·token-ratio + w_blk·block-ratio + distill·(KL(teacher‖student) + token MSE).

    forward(model, images, targets) -> (loss, logits): runs the student (training mode) and the teacher.
    loss_from_outputs(inputs, outputs, targets, teacher_outputs=None) -> loss, from DyVM's DyVMOutput.
    targets are class indices (B,) or soft targets (B, num_classes) (mixup). The frozen `teacher` (a plain
    Vim, e.g. create_model("vim_small") with the same checkpoint) runs in eval mode under no_grad on the
    same inputs, unless (teacher_logits, teacher_patch_tokens (B, M, d)) are given as teacher_outputs.
    With no teacher, the two distillation terms are omitted. `last_terms` holds the detached terms of
    the latest call. `DyVM.build_loss(teacher, ...)` makes one with the model's ρ, stages and β.
    """

    def __init__(self, teacher=None, keep_ratio=0.7, block_ratio=0.8, num_stages=3, token_ratio_weight=10.0,
                 block_ratio_weight=10.0, distill_weight=0.5, clf_weight=1.0, mse_token=True,
                 label_smoothing=0.0):
        super().__init__()
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
        ratios = keep_ratio if isinstance(keep_ratio, (list, tuple)) else \
            [keep_ratio ** (s + 1) for s in range(num_stages)]
        self.token_targets = [float(r) for r in ratios]
        self.block_ratio = float(block_ratio)
        self.token_ratio_weight, self.block_ratio_weight = token_ratio_weight, block_ratio_weight
        self.distill_weight, self.clf_weight = distill_weight, clf_weight
        self.mse_token = mse_token
        self.label_smoothing = label_smoothing
        self.soft_ce = SoftTargetCrossEntropy()
        self.last_terms = {}

    @classmethod
    def from_model(cls, model, teacher=None, **kwargs):
        """Takes ρ, the number of stages and β from a DyVM model."""
        return cls(teacher, keep_ratio=model.token_keep_ratios, block_ratio=model.block_ratio, **kwargs)

    def train(self, mode=True):  # the teacher always stays in eval mode
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def run_teacher(self, inputs):
        with torch.no_grad():
            tokens = self.teacher.forward_features(inputs)
            logits = self.teacher.forward_head(tokens)
            _, patches = split_cls(tokens, (tokens.shape[1] - 1) // 2)
        return logits, patches

    def classification_loss(self, logits, targets):
        if targets.dim() == logits.dim() and targets.is_floating_point():
            return self.soft_ce(logits, targets)
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def token_ratio_loss(self, pred_decisions):
        if len(pred_decisions) != len(self.token_targets):
            raise ValueError(f"got {len(pred_decisions)} pruning stages, loss expects {len(self.token_targets)} "
                             f"targets {self.token_targets}")
        loss = 0.0
        for keep, target in zip(pred_decisions, self.token_targets):
            loss = loss + ((keep.float().mean(1) - target) ** 2).mean()
        return loss / len(pred_decisions)

    def block_ratio_loss(self, block_policy):
        return (block_policy.float().mean() - self.block_ratio) ** 2

    def token_distill_loss(self, tokens, token_policy, current_pos, teacher_patches):
        teacher_t = batch_gather(teacher_patches, current_pos).to(tokens.dtype)
        sel = token_policy.reshape(tokens.shape[0], -1) > 0.5
        if not sel.any():
            return tokens.sum() * 0.0
        s, t = tokens[sel], teacher_t[sel]
        if self.mse_token:
            return F.mse_loss(s, t)
        return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)

    def loss_from_outputs(self, inputs, outputs, targets, teacher_outputs=None):
        """The total loss (scalar) from the student's training outputs; terms go to `last_terms`."""
        if not isinstance(outputs, DyVMOutput):
            raise TypeError("DyVMLoss needs the DyVMOutput of a DyVM model in training mode, got "
                            f"{type(outputs).__name__}")
        logits = outputs.logits.float()
        terms = dict(cls=self.classification_loss(logits, targets),
                     token_ratio=self.token_ratio_loss(outputs.pred_decisions),
                     block_ratio=self.block_ratio_loss(outputs.block_policy))
        loss = (self.clf_weight * terms["cls"] + self.token_ratio_weight * terms["token_ratio"]
                + self.block_ratio_weight * terms["block_ratio"])
        if teacher_outputs is None and self.teacher is not None:
            teacher_outputs = self.run_teacher(inputs)
        if teacher_outputs is not None:
            t_logits, t_patches = teacher_outputs
            terms["kl"] = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(t_logits.float(), -1),
                                   reduction="batchmean", log_target=True)
            terms["token_distill"] = self.token_distill_loss(outputs.tokens.float(), outputs.token_policy,
                                                             outputs.current_pos, t_patches.float())
            loss = loss + self.distill_weight * (terms["kl"] + terms["token_distill"])
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        return loss

    def forward(self, model, images, targets):
        """Runs the (training-mode, possibly DDP-wrapped) DyVM on `images`: returns (loss, logits)."""
        outputs = model(images)
        return self.loss_from_outputs(images, outputs, targets), outputs.logits


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------
def _create_dyvm(variant, num_classes=1000, img_size=224, **overrides):
    cfg = dict(VIM_DEFAULTS, **DYVM_DEFAULTS)
    cfg.update(DYVM_CFGS[variant])
    cfg.update(overrides)
    return DyVM(img_size=img_size, num_classes=num_classes, **cfg)


@register_model(imagenet_cfg(first_conv="patch_embed.proj"))
def dyvm_vim_tiny(num_classes=1000, img_size=224, **overrides):
    """DyVM on Vim-T (ρ 0.9, β 0.8): 7,367,086 params."""
    return _create_dyvm("dyvm_vim_tiny", num_classes, img_size, **overrides)


@register_model(imagenet_cfg(first_conv="patch_embed.proj"))
def dyvm_vim_small(num_classes=1000, img_size=224, **overrides):
    """DyVM on Vim-S (ρ 0.7, β 0.8): 26,594,110 params."""
    return _create_dyvm("dyvm_vim_small", num_classes, img_size, **overrides)


@register_model(imagenet_cfg(first_conv="patch_embed.proj"))
def dyvm_vim_base(num_classes=1000, img_size=224, **overrides):
    """DyVM on Vim-B (ρ 0.7, β 0.7): 100,631,134 params."""
    return _create_dyvm("dyvm_vim_base", num_classes, img_size, **overrides)


@register_model(imagenet_cfg(input_size=(1, 28, 28), mean=(0.1307,), std=(0.3081,), crop_pct=1.0,
                             interpolation="bilinear", num_classes=10, first_conv="patch_embed.proj"))
def dyvm_vim_mnist(num_classes=10, img_size=28, **overrides):
    """DyVM on vim_mnist (ρ 0.7, β 0.8, pruning before layers 2 and 4: 36 → 25 → 17 patches); fine-tune
    it from a vim_mnist run with that run as the teacher (py/training/configs/dyvm_vim_mnist.yaml)."""
    return _create_dyvm("dyvm_vim_mnist", num_classes, img_size, **overrides)
