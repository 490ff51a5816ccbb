"""The token-set denoiser: a transformer over the K unordered skeletal tokens (METHOD §6).

By default there is no positional embedding anywhere, so the network is
**permutation-equivariant**: permuting the K input tokens permutes the K outputs the same way
(a latent is a set). ``token_order="morton"`` is the alternative (issue 13's token-order lever):
every latent is sorted along a Morton (Z-order) curve of its sphere centres before training
(:func:`order_tokens`) and a learned embedding of the position in that order is added, so the
network sees a sequence whose neighbours in the list are mostly neighbours in space.
The noise condition (DDPM's t or EDM's c_noise(σ), see :mod:`.schedulers`) goes through
a sinusoidal embedding and an MLP; the class goes through an embedding table with one
extra learned **null class** (index ``num_classes``) used for unconditional predictions
and classifier-free guidance. Their sum conditions every block by adaLN-Zero (Peebles &
Xie 2023, "DiT"): LayerNorm without affine → per-channel scale/shift from the condition →
attention or MLP → a gate, initialised to zero so every block starts as the identity.
The output layer is zero-initialised too (an untrained network outputs 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SkellabError

__all__ = ["DenoiserConfig", "TokenDenoiser", "timestep_embedding", "class_or_null", "TOKEN_ORDERS", "FEATURE_NORMS",
           "CHANNELS", "SPHERE_CHANNELS", "order_tokens", "sort_tokens", "fourier_inputs", "split_channels",
           "generated_channels"]

TOKEN_ORDERS = ("set", "morton")
#: "channel": every feature channel standardised over the training tokens (a channel that barely varies across
#: tokens is scaled up to unit variance); "pooled": the feature channels share one mean and std, those of all their
#: values (a near-constant channel stays near-constant). The 4 sphere channels are always standardised per channel.
FEATURE_NORMS = ("channel", "pooled")
#: which channels of a token a denoiser generates: "all" (the joint model); or one stage of a two-stage model (GEM3D's
#: order): "spheres" (xyz, r, first) and "features" (the rest, given the clean spheres of every token as context)
CHANNELS = ("all", "spheres", "features")
SPHERE_CHANNELS = 4  # xyz + radius, the first channels of every token


@dataclass(frozen=True)
class DenoiserConfig:
    """Architecture of :class:`TokenDenoiser` (and its classifier-free-guidance dropout)."""

    token_dim: int = 16  # D, numbers per token: xyz 3 + radius 1 + features 12
    width: int = 256  # transformer channels (paper: 512)
    depth: int = 6  # transformer blocks (paper: 6)
    heads: int = 8  # attention heads (paper: 8)
    time_embed_dim: int = 128  # sinusoidal noise-condition embedding size (paper: 128)
    mlp_ratio: float = 4.0  # hidden width of each block's MLP, as a multiple of width
    num_classes: int = 0  # organ classes; 0 = unconditional model (only the null class)
    class_dropout: float = 0.2  # P(class → null) per training sample, for classifier-free guidance (paper: 0.2)
    dropout: float = 0.0  # dropout inside attention and MLP
    token_order: str = "set"  # "set": permutation-equivariant; "morton": sorted tokens + learned positions
    num_tokens: int = 0  # K, for token_order="morton" (one learned position per token); training sets it from the data
    sphere_weight: float = 1.0  # training only: loss weight of the 4 sphere channels (xyz, r) vs the features
    feature_norm: str = "channel"  # training only: how the latent normaliser scales the feature channels (FEATURE_NORMS)
    sphere_frequencies: int = 0  # L > 0: the 4 sphere channels also enter as sin/cos at L octaves (fourier_inputs)
    channels: str = "all"  # CHANNELS: "all" generates whole tokens; "spheres" / "features": a stage of a two-stage model
    self_condition: bool = False  # the network also reads its own previous x̂₀ estimate (Chen et al. 2023), see forward

    def __post_init__(self) -> None:
        if self.token_order not in TOKEN_ORDERS:
            raise SkellabError(f"DenoiserConfig: token_order must be one of {', '.join(TOKEN_ORDERS)}, "
                               f"got {self.token_order!r}")
        if self.num_tokens < 0:
            raise SkellabError(f"DenoiserConfig: num_tokens must be >= 0, got {self.num_tokens}")
        if min(self.token_dim, self.width, self.depth, self.heads, self.time_embed_dim) < 1:
            raise SkellabError("DenoiserConfig: token_dim, width, depth, heads, time_embed_dim must be >= 1")
        if self.width % self.heads:
            raise SkellabError(f"DenoiserConfig: width {self.width} is not divisible by heads {self.heads}")
        if self.time_embed_dim % 2:
            raise SkellabError(f"DenoiserConfig: time_embed_dim must be even, got {self.time_embed_dim}")
        if self.num_classes < 0 or not 0 <= self.class_dropout < 1 or not 0 <= self.dropout < 1:
            raise SkellabError("DenoiserConfig: num_classes >= 0, class_dropout and dropout in [0, 1)")
        if self.feature_norm not in FEATURE_NORMS:
            raise SkellabError(f"DenoiserConfig: feature_norm must be one of {', '.join(FEATURE_NORMS)}, "
                               f"got {self.feature_norm!r}")
        if not 0 <= self.sphere_frequencies <= 16:
            raise SkellabError(f"DenoiserConfig: sphere_frequencies must be in [0, 16], got {self.sphere_frequencies}")
        if self.channels not in CHANNELS:
            raise SkellabError(f"DenoiserConfig: channels must be one of {', '.join(CHANNELS)}, got {self.channels!r}")
        if self.channels != "all" and self.token_order != "set":
            raise SkellabError("DenoiserConfig: a two-stage model (channels spheres / features) needs token_order 'set'")
        if not 0 < self.sphere_weight <= 1000:
            raise SkellabError(f"DenoiserConfig: sphere_weight must be in (0, 1000], got {self.sphere_weight}")
        if not isinstance(self.self_condition, bool):
            raise SkellabError(f"DenoiserConfig: self_condition must be True or False, got {self.self_condition!r}")

    def shared_channels(self) -> slice | None:
        """The channels of whole latent tokens :meth:`LatentNormalizer.fit` pools into one mean and std (None: every
        channel its own). A two-stage model's stages share one normaliser of the whole tokens."""
        whole = self.token_dim > 4 or self.channels != "all"
        return slice(4, None) if self.feature_norm == "pooled" and whole else None

    @property
    def context_dim(self) -> int:
        """Channels read as clean context besides the noisy ones: the 4 sphere channels for the feature stage."""
        return SPHERE_CHANNELS if self.channels == "features" else 0

    def channel_weights(self) -> torch.Tensor | None:
        """(token_dim,) per-channel loss weights with mean 1: the 4 sphere channels get ``sphere_weight`` times the
        weight of a feature channel (None when uniform, when tokens have no feature channels, or for a stage of a
        two-stage model, which generates only one kind)."""
        if self.sphere_weight == 1.0 or self.token_dim <= 4 or self.channels != "all":
            return None
        w = torch.ones(self.token_dim)
        w[:4] = self.sphere_weight
        return w * (self.token_dim / w.sum())

    # presets -------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides: Any) -> "DenoiserConfig":
        """CI / CPU preset: width 64, depth 2, 4 heads (~0.17 M parameters)."""
        return replace(cls(width=64, depth=2, heads=4, time_embed_dim=64), **overrides)

    @classmethod
    def default(cls, **overrides: Any) -> "DenoiserConfig":
        """skellab's default: width 256, depth 6, 8 heads (~7.3 M parameters; trainable on CPU, slowly)."""
        return replace(cls(), **overrides)

    @classmethod
    def paper(cls, **overrides: Any) -> "DenoiserConfig":
        """The paper's size: width 512, depth 6, 8 heads, time embedding 128 (~29 M parameters)."""
        return replace(cls(width=512), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DenoiserConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SkellabError(f"DenoiserConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


def order_tokens(tokens: torch.Tensor, order: str = "morton", *, bits: int = 10) -> torch.Tensor:
    """Permutation (…, K) int64 that sorts each token set along ``order``; tokens (…, K, D), xyz first.

    ``"morton"``: the Z-order code of the centres quantised to ``bits`` bits per axis over [−1, 1]
    (ties broken by index, so the order is deterministic); ``"set"``: the identity.
    """
    if order not in TOKEN_ORDERS:
        raise SkellabError(f"unknown token order {order!r}: use {', '.join(TOKEN_ORDERS)}")
    K = tokens.shape[-2]
    ident = torch.arange(K, device=tokens.device).expand(tokens.shape[:-1])
    if order == "set":
        return ident.clone()
    q = ((tokens[..., :3].clamp(-1, 1) + 1) * 0.5 * ((1 << bits) - 1)).round().long()  # (…, K, 3)
    code = torch.zeros_like(q[..., 0])
    for b in range(bits):
        for axis in range(3):
            code |= ((q[..., axis] >> b) & 1) << (3 * b + axis)
    return torch.sort(code * K + ident, dim=-1).indices  # the index breaks ties: a stable order


def sort_tokens(tokens: torch.Tensor, order: str) -> torch.Tensor:
    """Token sets (…, K, D) sorted along ``order`` (:func:`order_tokens`); returned unchanged for "set"."""
    if order == "set":
        return tokens
    perm = order_tokens(tokens, order)
    return torch.gather(tokens, -2, perm.unsqueeze(-1).expand_as(tokens))


def fourier_inputs(x: torch.Tensor, octaves: int) -> torch.Tensor:
    """(…, D) → (…, D + 8·octaves): the tokens, then sin and cos of their 4 sphere channels (xyz, r) at
    frequencies π·2^l, l = 0 … octaves − 1 (channel-major: sin of channel c at octave l is column
    D + c·octaves + l, its cos 4·octaves further on; unchanged for octaves = 0).

    The denoiser sees standardised, scheduler-scaled tokens (about unit spread at every noise level). A linear
    input layer can only tell how far apart two tokens are through products of raw coordinates; sin/cos
    features make "these two spheres nearly touch" a simple function of the embeddings, at scales down to
    1/2^(octaves−1) of a channel's spread (NeRF's positional encoding, Mildenhall et al. 2020).
    """
    if octaves == 0:
        return x
    freqs = math.pi * 2.0 ** torch.arange(octaves, device=x.device, dtype=x.dtype)
    args = (x[..., :4, None] * freqs).flatten(-2)  # (…, 4·octaves)
    return torch.cat([x, torch.sin(args), torch.cos(args)], dim=-1)


def generated_channels(channels: str, whole: int) -> int:
    """How many of a whole token's ``whole`` numbers a denoiser generating ``channels`` makes: all of them, the 4
    sphere channels, or the rest. A stage of a two-stage model needs tokens with features: else SkellabError."""
    if channels != "all" and whole <= SPHERE_CHANNELS:
        raise SkellabError(f"a two-stage model needs tokens with features after the {SPHERE_CHANNELS} sphere "
                           f"channels, got {whole} numbers per token")
    return {"spheres": SPHERE_CHANNELS, "features": whole - SPHERE_CHANNELS}.get(channels, whole)


def split_channels(channels: str, x0: torch.Tensor, noise: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What a denoiser generating ``channels`` learns from whole standardised tokens ``x0`` (…, K, D) and noise of
    the same shape: (its clean target channels, their noise, its clean context or None). "all": everything, no
    context; "spheres": the first 4 channels; "features": the rest, with the clean spheres as context."""
    if channels == "all":
        return x0, noise, None
    if channels == "spheres":
        return x0[..., :SPHERE_CHANNELS], noise[..., :SPHERE_CHANNELS], None
    if channels == "features":
        return x0[..., SPHERE_CHANNELS:], noise[..., SPHERE_CHANNELS:], x0[..., :SPHERE_CHANNELS]
    raise SkellabError(f"unknown channels {channels!r}: use {', '.join(CHANNELS)}")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) → (B, dim): [cos(t·f_i), sin(t·f_i)], f_i = max_period^(−i/(dim/2)).

    As the Transformer's positional encoding and DDPM's timestep embedding; t may be a
    real number (EDM's c_noise = ¼ ln σ ∈ [−1.6, 1.1]: the high frequencies resolve it).
    Differentiable in t.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def class_or_null(class_index: torch.Tensor | None, num_classes: int, batch: int, device: torch.device) -> torch.Tensor:
    """(B,) embedding-table indices: class_index, with None / negative entries → the null class ``num_classes``."""
    if class_index is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    c = torch.as_tensor(class_index, device=device).long().reshape(-1)
    if c.shape[0] != batch:
        raise SkellabError(f"class_index has {c.shape[0]} entries for a batch of {batch}")
    if (c >= num_classes).any():
        raise SkellabError(f"class_index must be < num_classes={num_classes} (negative: unconditional)")
    return torch.where(c < 0, torch.full_like(c, num_classes), c)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]  # (B, K, W) with (B, W) → broadcast over tokens


class _Block(nn.Module):
    """adaLN-Zero transformer block over the token set."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, k, w = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # (B, W) each
        h = _modulate(self.norm1(x), shift1, scale1)
        q, kk, v = self.qkv(h).reshape(b, k, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, K, hs)
        a = F.scaled_dot_product_attention(q, kk, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + gate1[:, None] * self.proj(a.transpose(1, 2).reshape(b, k, w))
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class TokenDenoiser(nn.Module):
    """Permutation-equivariant transformer denoiser for token sets ``(B, K, D)``.

    ``forward(x, t, class_index, context=None, self_cond=None)``:

    x           : (B, K, D) noisy (already scheduler-scaled) standardised tokens (D = ``config.token_dim``)
    t           : (B,) float noise condition from ``scheduler.scale_model_input`` (DDPM t or EDM c_noise)
    class_index : (B,) int64 in [0, num_classes), negative = null class; or None (all null)
    context     : (B, K, 4) clean standardised spheres of the same tokens; required by (only) the feature stage of
                  a two-stage model (``config.channels == "features"``), which enter it like its noisy channels
    self_cond   : (B, K, D) only with ``config.self_condition``: the sampler's x̂₀ estimate from its previous call
                  (standardised; None → zeros, as at the first call). Training feeds the network's own no-grad
                  estimate on half of the samples and zeros on the rest (Chen et al. 2023, "Analog Bits"), so the
                  network learns to refine its last guess; sampling costs no extra call
    returns     : (B, K, D) raw network output (ε, v, x₀ or EDM's F, per the scheduler)

    Differentiable in x (and t). ``null_class`` is the index of the learned
    unconditional embedding, ``num_classes``.
    """

    def __init__(self, *, config: DenoiserConfig | None = None):
        super().__init__()
        cfg = self.config = config or DenoiserConfig()
        self.null_class = cfg.num_classes
        if cfg.channels == "spheres" and cfg.token_dim != SPHERE_CHANNELS:
            raise SkellabError(f"DenoiserConfig: the sphere stage generates {SPHERE_CHANNELS} channels (xyz, r), "
                               f"got token_dim {cfg.token_dim}")
        if cfg.sphere_frequencies and cfg.channels == "all" and cfg.token_dim < 4:
            raise SkellabError("DenoiserConfig: sphere_frequencies needs tokens with the 4 sphere channels")
        # the sphere channels (the noisy ones, or the feature stage's clean context) enter with their sin/cos
        # self-conditioning: the previous x̂₀ estimate of the generated channels enters beside them (zeros: none yet)
        self.input = nn.Linear(cfg.token_dim * (2 if cfg.self_condition else 1) + cfg.context_dim
                               + 8 * cfg.sphere_frequencies, cfg.width)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_embed_dim, cfg.width), nn.SiLU(),
                                      nn.Linear(cfg.width, cfg.width))
        self.class_embed = nn.Embedding(cfg.num_classes + 1, cfg.width)  # last row: the null class
        nn.init.normal_(self.class_embed.weight, std=1.0)  # as strong as the time signal from step 0
        if cfg.token_order != "set" and cfg.num_tokens < 1:
            raise SkellabError(f"token_order={cfg.token_order!r} needs DenoiserConfig.num_tokens >= 1 (the K of the latents)")
        self.position = (nn.Parameter(0.02 * torch.randn(cfg.num_tokens, cfg.width)) if cfg.token_order != "set"
                         else None)  # one learned embedding per place in the token order
        self.blocks = nn.ModuleList(_Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))
        self.output = nn.Linear(cfg.width, cfg.token_dim)
        for lin in (self.ada_out[1], self.output):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def class_or_null(self, class_index: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """(B,) embedding indices: the class, or ``null_class`` where None / negative."""
        return class_or_null(class_index, self.config.num_classes, batch, device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_index: torch.Tensor | None = None,
                context: torch.Tensor | None = None, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.config.token_dim:
            raise SkellabError(f"denoiser input must be (B, K, {self.config.token_dim}), got {tuple(x.shape)}")
        if self_cond is not None and not self.config.self_condition:
            raise SkellabError("this denoiser was not trained with self-conditioning: pass no self_cond")
        if self_cond is not None and self_cond.shape != x.shape:
            raise SkellabError(f"self_cond must have the shape of x, {tuple(x.shape)}, got {tuple(self_cond.shape)}")
        ctx_dim = self.config.context_dim
        if (context is None) != (ctx_dim == 0):
            raise SkellabError("the feature stage of a two-stage model needs the spheres as context" if ctx_dim
                               else f"this denoiser (channels {self.config.channels!r}) takes no context")
        if context is not None and tuple(context.shape) != (*x.shape[:2], ctx_dim):
            raise SkellabError(f"context must be (B, K, {ctx_dim}) = {(*x.shape[:2], ctx_dim)}, "
                               f"got {tuple(context.shape)}")
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)  # (B,), a scalar is broadcast
        c = self.time_mlp(timestep_embedding(t, self.config.time_embed_dim)) \
            + self.class_embed(self.class_or_null(class_index, b, x.device))  # (B, W)
        inp = x if context is None else torch.cat([context.to(x.dtype), x], dim=-1)  # spheres first
        inp = fourier_inputs(inp, self.config.sphere_frequencies)
        if self.config.self_condition:  # the previous x̂₀ (standardised, generated channels), zeros at the first call
            inp = torch.cat([inp, torch.zeros_like(x) if self_cond is None else self_cond.to(x.dtype)], dim=-1)
        h = self.input(inp)  # (B, K, W)
        if self.position is not None:
            if x.shape[1] != self.position.shape[0]:
                raise SkellabError(f"this denoiser orders {self.position.shape[0]} tokens, got {x.shape[1]}")
            h = h + self.position
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.output(_modulate(self.norm_out(h), shift, scale))  # (B, K, D)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
