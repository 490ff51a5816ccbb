"""The skeletal latent autoencoder (METHOD §5): surface points + skeleton → K tokens → SDF.

A latent is a set of K **skeletal tokens**, each ``[xyz (3), r (1), feature (F)]``:
the centre and radius of one skeletal sphere plus F learned, standardised features.

Encoder. Per-point residual MLP over the surface points (Fourier-embedded xyz and
normals). After every block, the features of each token's ``group_k`` nearest surface
points, plus an embedding of their offset from the token, are max-pooled onto the
token. The pooled features, the global max and mean over tokens and an optional
class bias go through a small head to F channels and a LayerNorm without affine
parameters ("standardised latents", as the paper).

Decoder. Each query point q is embedded (Fourier features of xyz and the
**sphere-distance prior** ``s(q) = min_k (‖q − c_k‖ − r_k)``, the SDF of the union of
skeletal spheres, itself a coarse SDF of the shape). Cross-attention blocks
(query → tokens) then predict a residual, so the output is

    sdf(q) / τ = clamp(s(q) / τ, −1, 1) + residual(q),

with τ the truncation distance. The output head starts at zero, so an untrained
model already decodes the sphere union.

Three decoders share that form (``AutoencoderConfig.decoder``): ``"global"`` (above: every
query attends to all K tokens), ``"local"`` (the same blocks, attention restricted to the
``decoder_neighbors`` nearest spheres by sphere distance) and ``"kernel"`` (no attention: each
query pools its nearest spheres through one small MLP of the neighbour's features and its
offset from the query, :class:`_KernelDecoder`; local and translation-equivariant by construction
and the cheapest per query). ``benchmarks/fidelity.py`` and ``benchmarks/bench_decoder.py``
compare them.

Conventions: normalised frame (per-shape, max |coordinate| = 1); SDF **negative
inside**, positive outside (skellab's sign, see :mod:`skellab.data.sampling`), in
normalised units, truncated to [−τ, τ].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SkellabError
from ..skeleton import METHODS as SKELETON_METHODS
from ..skeleton.ops import farthest_point_sampling, gather, knn

__all__ = ["AutoencoderConfig", "Latent", "SkeletalAutoencoder", "sphere_union_sdf", "fourier_features"]

TOKEN_SOURCES = ("skeleton", "surface")
DECODERS = ("global", "local", "kernel")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture and loss weights of :class:`SkeletalAutoencoder` (normalised frame)."""

    num_tokens: int = 256  # K, skeletal tokens per shape (the paper's 256)
    feature_dim: int = 12  # F, learned features per token; a token is 3 + 1 + F = 16 numbers
    token_source: str = "skeleton"  # "skeleton" (skeletal spheres) | "surface" (FPS surface points, the SPSDF ablation)
    num_surface: int = 2560  # surface points fed to the encoder (the paper's N)
    use_normals: bool = True  # feed surface normals to the encoder
    encoder_width: int = 128  # channels of the per-point MLP
    encoder_blocks: int = 3  # residual blocks; features are pooled onto the tokens after each
    group_k: int = 32  # surface points grouped onto each token (kNN)
    num_frequencies: int = 6  # Fourier octaves of the xyz embeddings (2^0 .. 2^(n-1)) · π
    decoder_width: int = 128  # channels of the query / token embeddings
    decoder_heads: int = 4  # attention heads
    decoder_blocks: int = 3  # cross-attention blocks (query → tokens)
    token_self_attention: int = 0  # self-attention layers over the tokens before decoding
    decoder: str = "global"  # "global": each query attends to all K tokens; "local": to its nearest spheres;
    #                          "kernel": a small MLP pools its nearest spheres (no attention, no absolute position)
    decoder_neighbors: int = 16  # "local"/"kernel": tokens each query reads (nearest by sphere distance ‖q − c‖ − r)
    kernel_width: int = 64  # "kernel": channels per neighbour
    mlp_ratio: int = 2  # hidden width of the feed-forward layers = ratio · width
    sphere_prior: bool = True  # predict a residual on top of the sphere-union SDF
    truncation: float = 0.25  # τ: SDF truncated to [-τ, τ] (paper 0.25)
    sdf_weight: float = 1.0  # weight of the truncated-SDF MSE (in units of τ)
    skeleton_weight: float = 0.1  # weight of the skeleton constraint (sdf(c_k) = −r_k); 0 turns it off
    sphere_noise: float = 0.0  # training only: σ of Gaussian noise on the token spheres before decoding, in units of
    #                            each sphere channel's spread over the training skeletons (:func:`perturb_spheres`)
    num_classes: int = 0  # organ classes (0: unconditional)
    class_conditioning: bool = False  # add a learned class bias to the token features
    skeleton_method: str = "medial"  # how the token spheres are made (see skellab.skeleton.METHODS)
    skeleton_checkpoint: str | None = None  # "learned" only: its checkpoint (None: the shipped weights)

    def __post_init__(self) -> None:
        if self.token_source not in TOKEN_SOURCES:
            raise SkellabError(f"token_source must be 'skeleton' or 'surface', got {self.token_source!r}")
        if self.token_source == "surface" and self.sphere_prior:
            raise SkellabError("token_source='surface' has no sphere radii: set sphere_prior=False")
        for name in ("num_tokens", "feature_dim", "num_surface", "encoder_width", "group_k",
                     "decoder_width", "decoder_heads", "decoder_blocks", "mlp_ratio"):
            if int(getattr(self, name)) < 1:
                raise SkellabError(f"AutoencoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.encoder_blocks < 1 or self.num_frequencies < 0 or self.token_self_attention < 0:
            raise SkellabError("AutoencoderConfig: encoder_blocks >= 1, num_frequencies >= 0, token_self_attention >= 0")
        if self.decoder_width % self.decoder_heads:
            raise SkellabError(f"decoder_width {self.decoder_width} is not divisible by decoder_heads {self.decoder_heads}")
        if self.group_k > self.num_surface:
            raise SkellabError(f"group_k {self.group_k} exceeds num_surface {self.num_surface}")
        if not self.truncation > 0:
            raise SkellabError(f"truncation must be > 0, got {self.truncation}")
        if self.sdf_weight < 0 or self.skeleton_weight < 0:
            raise SkellabError("loss weights must be >= 0")
        if not 0.0 <= float(self.sphere_noise) <= 1.0:
            raise SkellabError(f"sphere_noise must be in [0, 1] (channel spreads), got {self.sphere_noise}")
        if self.class_conditioning and self.num_classes < 1:
            raise SkellabError("class_conditioning needs num_classes >= 1")
        if self.decoder not in DECODERS:
            raise SkellabError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.decoder == "kernel" and int(self.kernel_width) < 1:
            raise SkellabError(f"kernel_width must be >= 1, got {self.kernel_width}")
        if self.decoder in ("local", "kernel") and not 1 <= int(self.decoder_neighbors) <= int(self.num_tokens):
            raise SkellabError(f"decoder_neighbors must be in [1, num_tokens={self.num_tokens}], got {self.decoder_neighbors}")
        if self.skeleton_method not in SKELETON_METHODS:
            raise SkellabError(f"skeleton_method must be one of {', '.join(SKELETON_METHODS)}, got {self.skeleton_method!r}")

    @property
    def token_dim(self) -> int:
        return 4 + self.feature_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AutoencoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SkellabError(f"unknown autoencoder config fields: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "AutoencoderConfig":
        return replace(self, **changes)


@dataclass(frozen=True)
class Latent:
    """A batch of skeletal latents.

    tokens      : (B, K, 4 + F) float, ``[xyz (3), r (1), feature (F)]`` per token,
                  xyz and r in the normalised frame
    class_index : (B,) int64 organ class, or None (unconditional)
    """

    tokens: torch.Tensor
    class_index: torch.Tensor | None = None

    def __post_init__(self) -> None:
        t = self.tokens
        if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[-1] < 4:
            shape = tuple(t.shape) if hasattr(t, "shape") else type(t).__name__
            raise SkellabError(f"latent tokens must be a (B, K, 4 + F) tensor, got {shape}")
        c = self.class_index
        if c is not None and (not isinstance(c, torch.Tensor) or c.shape != t.shape[:1]):
            raise SkellabError(f"latent class_index must have shape ({t.shape[0]},), got {getattr(c, 'shape', c)}")

    @classmethod
    def from_parts(cls, centers: torch.Tensor, radii: torch.Tensor, features: torch.Tensor,
                   class_index: torch.Tensor | None = None) -> "Latent":
        """Assemble from centers (B, K, 3), radii (B, K), features (B, K, F)."""
        return cls(torch.cat([centers, radii.unsqueeze(-1), features], dim=-1), class_index)

    @property
    def centers(self) -> torch.Tensor:
        """(B, K, 3) skeletal sphere centres."""
        return self.tokens[..., :3]

    @property
    def radii(self) -> torch.Tensor:
        """(B, K) skeletal sphere radii."""
        return self.tokens[..., 3]

    @property
    def features(self) -> torch.Tensor:
        """(B, K, F) learned token features."""
        return self.tokens[..., 4:]

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    def __len__(self) -> int:
        return self.batch_size

    def __getitem__(self, index: int | slice) -> "Latent":
        """The latents ``index`` (an int keeps the batch axis: shape (1, K, 4 + F))."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        ci = None if self.class_index is None else self.class_index[index]
        return Latent(self.tokens[index], ci)

    def to(self, device: str | torch.device) -> "Latent":
        ci = None if self.class_index is None else self.class_index.to(device)
        return Latent(self.tokens.to(device), ci)

    def detach(self) -> "Latent":
        return Latent(self.tokens.detach(), self.class_index)

    @staticmethod
    def cat(latents: list["Latent"]) -> "Latent":
        """Concatenate along the batch axis."""
        ci = [lat.class_index for lat in latents]
        cls_index = None if any(c is None for c in ci) else torch.cat(ci)
        return Latent(torch.cat([lat.tokens for lat in latents]), cls_index)


#: the smallest radius :func:`perturb_spheres` leaves a sphere (normalised units)
MIN_PERTURBED_RADIUS = 1e-3


def perturb_spheres(latent: Latent, noise: torch.Tensor, scale: torch.Tensor, spread: torch.Tensor) -> Latent:
    """``latent`` with its spheres moved as a sampler's errors would move them; the features unchanged.

    noise  : (B, K, 4) standard normal draws for [x, y, z, r]
    scale  : (B,) σ of each shape, in units of ``spread``
    spread : (4,) each sphere channel's standard deviation (e.g. over the training skeletons)

    centres and radii get ``scale · spread · noise``; radii stay ≥ :data:`MIN_PERTURBED_RADIUS`. What
    ``AutoencoderConfig.sphere_noise`` trains the decoder on: the target stays the clean surface, so the decoder
    learns to read a slightly wrong skeleton as the organ it was meant to be (conditioning augmentation, as in
    cascaded diffusion models; Ho et al. 2022).
    """
    tok = latent.tokens
    if tuple(noise.shape) != (*tok.shape[:2], 4) or tuple(scale.shape) != tok.shape[:1] or tuple(spread.shape) != (4,):
        raise SkellabError(f"perturb_spheres: noise (B, K, 4), scale (B,) and spread (4,) for tokens {tuple(tok.shape)}, "
                           f"got {tuple(noise.shape)}, {tuple(scale.shape)}, {tuple(spread.shape)}")
    step = noise.to(tok) * (scale.to(tok).view(-1, 1, 1) * spread.to(tok))
    spheres = tok[..., :4] + step
    spheres = torch.cat([spheres[..., :3], spheres[..., 3:4].clamp_min(MIN_PERTURBED_RADIUS)], dim=-1)
    return Latent(torch.cat([spheres, tok[..., 4:]], dim=-1), latent.class_index)


def _frequencies(num_frequencies: int, like: torch.Tensor) -> torch.Tensor:
    """π·2^i for i < num_frequencies, on ``like``'s device and dtype: the frequencies of :func:`fourier_features`."""
    return math.pi * 2.0 ** torch.arange(num_frequencies, device=like.device, dtype=like.dtype)


def fourier_features(x: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """``[x, sin(2^i π x), cos(2^i π x)]`` for i < n: (..., 3) → (..., 3 + 6n). Differentiable."""
    if num_frequencies == 0:
        return x
    xf = (x.unsqueeze(-1) * _frequencies(num_frequencies, x)).flatten(-2)  # (..., 3n)
    return torch.cat([x, xf.sin(), xf.cos()], dim=-1)


def sphere_union_sdf(queries: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor,
                     *, chunk: int = 16384) -> torch.Tensor:
    """SDF of the union of spheres, ``min_k (‖q − c_k‖ − r_k)``: (B, Q), negative inside.

    queries (B, Q, 3), centers (B, K, 3), radii (B, K). Exact (it is the SDF of the union
    outside it, and a lower bound on |SDF| inside). Differentiable almost everywhere.
    """
    out = []
    for s in range(0, queries.shape[1], chunk):
        d = torch.cdist(queries[:, s : s + chunk], centers)  # (B, q, K)
        # in place where no gradient is taken (decoding): the same numbers without a second (B, q, K) array
        d = d.sub_(radii.unsqueeze(1)) if not d.requires_grad else d - radii.unsqueeze(1)
        out.append(d.amin(-1))
    return torch.cat(out, dim=1) if out else queries.new_zeros(queries.shape[:2])


def _neighbours(queries: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, k: int,
                *, chunk: int = 16384, ordered: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` spheres nearest each query by sphere distance ``‖q − c‖ − r``.

    returns idx (B, Q, k) int64 (nearest first; in no particular order with ``ordered=False``, which is
    cheaper), rel (B, Q, k, 6) = [offset / max(r, 0.01) (3), ‖offset‖, sphere distance, r] and the
    sphere-union SDF (B, Q) (the smallest sphere distance).
    The neighbour choice is discrete (no gradient); ``rel`` is differentiable wrt queries and spheres.
    """
    idx = torch.cat([(torch.cdist(queries[:, s : s + chunk], centers) - radii.unsqueeze(1))
                     .topk(k, dim=-1, largest=False, sorted=ordered).indices
                     for s in range(0, queries.shape[1], chunk)], dim=1)
    B, Q, _ = idx.shape
    c = gather(centers, idx.reshape(B, Q * k)).view(B, Q, k, 3)
    r = torch.gather(radii, 1, idx.reshape(B, Q * k)).view(B, Q, k)
    off = queries.unsqueeze(2) - c
    dist = off.norm(dim=-1)
    sd = dist - r
    rel = torch.cat([off / r.clamp_min(0.01).unsqueeze(-1), dist.unsqueeze(-1), sd.unsqueeze(-1), r.unsqueeze(-1)], -1)
    return idx, rel, sd[..., 0] if ordered else sd.amin(-1)


def _mlp(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, hidden), nn.GELU(), nn.Linear(hidden, width_out))


class _ResBlock(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = _mlp(width, hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class _Attention(nn.Module):
    """Multi-head attention ``x → ctx`` with pre-norm and a residual (F.scaled_dot_product_attention)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        B, Q, C = x.shape
        h = self.heads
        q = self.q(self.norm_q(x)).view(B, Q, h, C // h).transpose(1, 2)  # (B, h, Q, C/h)
        k, v = self.kv(ctx).view(B, ctx.shape[1], 2, h, C // h).permute(2, 0, 3, 1, 4)  # 2 × (B, h, K, C/h)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, h, Q, C/h)
        return x + self.out(y.transpose(1, 2).reshape(B, Q, C))


class _LocalAttention(_Attention):
    """Each query attends to its ``k`` nearest tokens only (pre-norm, residual).

    Keys and values are projected once per token (``kv``: (B, K, 2C)) and gathered per query, so a
    query costs O(k·C) instead of O(K·C). A small MLP of the query's position relative to each
    neighbour sphere (offset / radius, distance, sphere distance) adds a per-head bias to the
    attention logits: the decoder knows *where* a token is from the query, not only what it is.
    """

    def __init__(self, width: int, heads: int):
        super().__init__(width, heads)
        self.rel = nn.Sequential(nn.Linear(6, 32), nn.GELU(), nn.Linear(32, heads))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, idx: torch.Tensor,  # type: ignore[override]
                rel: torch.Tensor) -> torch.Tensor:
        """x (B, Q, C) queries; kv (B, K, 2C) projected tokens; idx (B, Q, k) neighbours; rel (B, Q, k, 6).

        Logits and the weighted sum are dense products with all K keys/values (fast matrix
        products); the softmax runs over the k neighbours only (the others get weight 0), so the
        result equals attention restricted to the neighbours without gathering k·C numbers per query.
        """
        B, Q, C = x.shape
        h, K = self.heads, kv.shape[1]
        q = self.q(self.norm_q(x)).view(B, Q, h, C // h).transpose(1, 2)  # (B, h, Q, d)
        key, val = kv.view(B, K, 2, h, C // h).permute(2, 0, 3, 1, 4)  # 2 × (B, h, K, d)
        hidx = idx.unsqueeze(1).expand(B, h, Q, idx.shape[-1])  # (B, h, Q, k)
        logits = (q @ key.transpose(-1, -2)).gather(-1, hidx) / math.sqrt(C // h)  # (B, h, Q, k)
        w = (logits + self.rel(rel).permute(0, 3, 1, 2)).softmax(-1)
        dense = torch.zeros(B, h, Q, K, dtype=w.dtype, device=w.device).scatter(-1, hidx, w)
        y = dense @ val  # (B, h, Q, d)
        return x + self.out(y.transpose(1, 2).reshape(B, Q, C))


class _KernelDecoder(nn.Module):
    """Decoder ``"kernel"``: each query reads its ``k`` nearest spheres through one shared MLP.

    Per token, a value ``v = W_t [r, f]`` is computed once per shape. Per (query, neighbour) pair,
    ``h = MLP(v + W_r e(q − c, r))`` with ``e`` the Fourier features of the offset plus the offset
    in radii, the distance, the sphere distance and r; the pairs are pooled with softmax weights
    read off ``h``, and a head maps ``[pooled, clamp(s(q)/τ)]`` to the residual. Nothing depends on
    the absolute position of the query, only on where it is relative to the nearby spheres, so
    the decoder is translation-equivariant and local by construction, and a query costs
    O(k·C²) with a small C instead of cross-attention blocks over all K tokens.
    """

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        C, H = cfg.kernel_width, 2 * cfg.kernel_width
        self.num_frequencies = cfg.num_frequencies
        self.value = nn.Linear(1 + cfg.feature_dim, C)
        self.rel = nn.Linear(3 + 6 * cfg.num_frequencies + 6, C)
        self.hidden = nn.Linear(C, C)
        self.score = nn.Linear(C, 1)
        self.head = nn.Sequential(nn.Linear(C + 1, H), nn.GELU(), nn.Linear(H, H), nn.GELU(), nn.Linear(H, 1))
        nn.init.zeros_(self.head[-1].weight)  # start from the sphere-union prior
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, tokens: torch.Tensor, queries: torch.Tensor, k: int, truncation: float,
                use_prior: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, K, 4 + F), queries (B, Q, 3) → (residual (B, Q), clamped prior s(q)/τ (B, Q))."""
        B = queries.shape[0]
        # the k nearest spheres, unordered (the pooling is a set function); union: the sphere-union SDF
        idx, rel, union = _neighbours(queries, tokens[..., :3], tokens[..., 3], min(k, tokens.shape[1]), ordered=False)
        # v + W_rel e + b_rel, with the bias folded into the per-token values and the add fused into one addmm
        values = self.value(tokens[..., 3:]) + self.rel.bias  # (B, K, C), once per shape
        v = gather(values, idx.reshape(B, -1)).reshape(-1, values.shape[-1])  # (B·Q·k, C)
        off = rel[..., :3] * rel[..., 5:6].clamp_min(0.01)  # q − c (rel holds it divided by max(r, 0.01))
        if self.num_frequencies:
            xf = (off.unsqueeze(-1) * _frequencies(self.num_frequencies, off)).flatten(-2)  # fourier_features(off), in one cat with rel
            e = torch.cat([off, xf.sin(), xf.cos(), rel], dim=-1)
        else:
            e = torch.cat([off, rel], dim=-1)
        h = F.gelu(torch.addmm(v, e.reshape(v.shape[0], -1), self.rel.weight.t())).view(*idx.shape, -1)
        h = F.gelu(self.hidden(h))  # (B, Q, k, C)
        w = self.score(h).softmax(dim=2)  # (B, Q, k, 1)
        pooled = (w * h).sum(2)  # (B, Q, C)
        prior = (union / truncation).clamp(-1.0, 1.0) if use_prior else union.new_zeros(union.shape)
        return self.head(torch.cat([pooled, prior.unsqueeze(-1)], dim=-1)).squeeze(-1), prior


class _Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        C, H = cfg.encoder_width, cfg.encoder_width * cfg.mlp_ratio
        d_in = 3 + 6 * cfg.num_frequencies + (3 if cfg.use_normals else 0)
        self.stem = nn.Linear(d_in, C)
        self.blocks = nn.ModuleList(_ResBlock(C, H) for _ in range(cfg.encoder_blocks))
        # grouping (PointNet-style, cheap): per-point projection + offset embedding → GELU →
        # max over the k neighbours → MLP on the pooled token feature
        self.proj = nn.ModuleList(nn.Linear(C, C) for _ in range(cfg.encoder_blocks))
        self.pos = nn.ModuleList(nn.Linear(3 + 6 * cfg.num_frequencies, C, bias=False) for _ in range(cfg.encoder_blocks))
        self.group = nn.ModuleList(_mlp(C, H, C) for _ in range(cfg.encoder_blocks))
        self.class_bias = nn.Embedding(cfg.num_classes, C) if cfg.class_conditioning else None
        self.head = nn.Sequential(nn.LayerNorm(3 * C), _mlp(3 * C, H, cfg.feature_dim))
        self.standardise = nn.LayerNorm(cfg.feature_dim, elementwise_affine=False)

    def forward(self, points, normals, centers, class_index):
        cfg = self.cfg
        _, idx = knn(centers, points, cfg.group_k)  # (B, K, k) nearest surface points of each token
        rel = gather(points, idx) - centers.unsqueeze(2)  # (B, K, k, 3)
        rel_emb = fourier_features(rel, cfg.num_frequencies)
        x = fourier_features(points, cfg.num_frequencies)
        if cfg.use_normals:
            x = torch.cat([x, normals], dim=-1)
        h = self.stem(x)  # (B, N, C)
        pooled = 0
        for block, proj, pos, group in zip(self.blocks, self.proj, self.pos, self.group):
            h = block(h)
            g = F.gelu(gather(proj(h), idx) + pos(rel_emb))  # (B, K, k, C)
            pooled = pooled + group(g.amax(dim=2))  # (B, K, C)
        t = pooled
        if self.class_bias is not None:
            t = t + self.class_bias(class_index).unsqueeze(1)
        glob = torch.cat([t.amax(1, keepdim=True), t.mean(1, keepdim=True)], dim=-1).expand(-1, t.shape[1], -1)
        return self.standardise(self.head(torch.cat([t, glob], dim=-1)))  # (B, K, F)


class SkeletalAutoencoder(nn.Module):
    """Skeletal latent autoencoder: ``encode`` surface + skeleton → :class:`Latent`; ``decode`` → SDF.

    Build with ``SkeletalAutoencoder(config=AutoencoderConfig(...))``; ``classes`` (optional)
    names the organ classes of ``class_index``.
    """

    def __init__(self, *, config: AutoencoderConfig = AutoencoderConfig(), classes: list[str] | None = None):
        super().__init__()
        self.config = cfg = config
        self.classes = list(classes) if classes is not None else []
        #: where the weights came from: ``step``, ``metrics``, ``train`` (set by the checkpoint loader)
        self.info: dict[str, Any] = {}
        if cfg.class_conditioning and self.classes and len(self.classes) != cfg.num_classes:
            raise SkellabError(f"{len(self.classes)} class names given for num_classes={cfg.num_classes}")
        self.encoder = _Encoder(cfg)
        if cfg.decoder == "kernel":
            self.kernel = _KernelDecoder(cfg)
            return
        C, H = cfg.decoder_width, cfg.decoder_width * cfg.mlp_ratio
        fq = 3 + 6 * cfg.num_frequencies
        self.query_embed = _mlp(fq + (1 if cfg.sphere_prior else 0), H, C)
        self.token_embed = nn.Sequential(nn.Linear(fq + 1 + cfg.feature_dim, C), nn.LayerNorm(C))
        self.token_self = nn.ModuleList(_Attention(C, cfg.decoder_heads) for _ in range(cfg.token_self_attention))
        attention = _LocalAttention if cfg.decoder == "local" else _Attention
        self.cross = nn.ModuleList(attention(C, cfg.decoder_heads) for _ in range(cfg.decoder_blocks))
        self.ffn = nn.ModuleList(_ResBlock(C, H) for _ in range(cfg.decoder_blocks))
        self.out = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, 1))
        nn.init.zeros_(self.out[1].weight)  # start from the sphere-union prior
        nn.init.zeros_(self.out[1].bias)

    # ------------------------------------------------------------------ encode
    def encode(
        self,
        points: torch.Tensor,
        normals: torch.Tensor | None,
        centers: torch.Tensor | None = None,
        radii: torch.Tensor | None = None,
        class_index: torch.Tensor | None = None,
    ) -> Latent:
        """Surface points and skeletal spheres → latent.

        points      : (B, N, 3) surface samples, normalised frame
        normals     : (B, N, 3) unit outward normals (None if ``config.use_normals`` is False)
        centers     : (B, K, 3) skeletal sphere centres (token_source "skeleton"); ignored
                      for "surface" (tokens at K farthest-point samples of ``points``, r = 0)
        radii       : (B, K) sphere radii
        class_index : (B,) int64, required when ``config.class_conditioning``
        returns     : :class:`Latent` with tokens (B, K, 4 + F); differentiable wrt
                      points, normals, centers and radii.
        """
        cfg = self.config
        _check_points(points, "points")
        B, N, _ = points.shape
        if cfg.use_normals:
            if normals is None or tuple(normals.shape) != tuple(points.shape):
                raise SkellabError(f"normals must match points {tuple(points.shape)}, got "
                                   f"{None if normals is None else tuple(normals.shape)}")
        if N < cfg.group_k:
            raise SkellabError(f"encode needs at least group_k={cfg.group_k} surface points, got {N}")
        if cfg.token_source == "surface":
            if cfg.num_tokens > N:
                raise SkellabError(f"cannot place {cfg.num_tokens} tokens on {N} surface points")
            centers = gather(points, farthest_point_sampling(points, cfg.num_tokens))
            radii = points.new_zeros(B, cfg.num_tokens)
        else:
            if centers is None or radii is None:
                raise SkellabError("encode needs skeleton centers (B, K, 3) and radii (B, K) for token_source='skeleton'")
            _check_points(centers, "centers")
            if centers.shape[0] != B:
                raise SkellabError(f"centers batch {centers.shape[0]} does not match points batch {B}")
            if tuple(radii.shape) != tuple(centers.shape[:2]):
                raise SkellabError(f"radii must have shape {tuple(centers.shape[:2])}, got {tuple(radii.shape)}")
        if cfg.class_conditioning:
            if class_index is None:
                raise SkellabError("this autoencoder is class-conditioned: pass class_index (B,)")
            class_index = torch.as_tensor(class_index, device=points.device).long().reshape(-1)
            if class_index.shape[0] != B or int(class_index.min()) < 0 or int(class_index.max()) >= cfg.num_classes:
                raise SkellabError(f"class_index must be (B,)={B} values in [0, {cfg.num_classes})")
        elif class_index is not None:
            class_index = torch.as_tensor(class_index, device=points.device).long().reshape(-1)
        feats = self.encoder(points, normals, centers, class_index)
        return Latent.from_parts(centers, radii, feats, class_index)

    # ------------------------------------------------------------------ decode
    def decode_raw(self, latents: Latent, queries: torch.Tensor) -> torch.Tensor:
        """Untruncated network output in units of τ: (B, Q). What the loss sees."""
        cfg = self.config
        if not isinstance(latents, Latent):
            raise SkellabError(f"decode expects a Latent, got {type(latents).__name__}")
        _check_points(queries, "queries")
        tok = latents.tokens
        if tok.shape[-1] != cfg.token_dim:
            raise SkellabError(f"latent tokens have {tok.shape[-1]} channels, this model expects {cfg.token_dim}")
        if tok.shape[0] != queries.shape[0]:
            raise SkellabError(f"latent batch {tok.shape[0]} does not match queries batch {queries.shape[0]}")
        if cfg.decoder == "kernel":
            residual, prior = self.kernel(tok, queries, cfg.decoder_neighbors, cfg.truncation, cfg.sphere_prior)
            return residual + prior
        c, r = latents.centers, latents.radii
        t = self.token_embed(torch.cat([fourier_features(c, cfg.num_frequencies), tok[..., 3:]], dim=-1))
        for layer in self.token_self:
            t = layer(t, t)
        qf = fourier_features(queries, cfg.num_frequencies)
        prior = None
        if cfg.decoder == "local":
            idx, rel, union = _neighbours(queries, c, r, cfg.decoder_neighbors)
            if cfg.sphere_prior:
                prior = (union / cfg.truncation).clamp(-1.0, 1.0)  # (B, Q): the nearest sphere gives the union
        elif cfg.sphere_prior:
            prior = (sphere_union_sdf(queries, c, r) / cfg.truncation).clamp(-1.0, 1.0)  # (B, Q)
        if prior is not None:
            qf = torch.cat([qf, prior.unsqueeze(-1)], dim=-1)
        x = self.query_embed(qf)
        for attn, ffn in zip(self.cross, self.ffn):
            x = ffn(attn(x, attn.kv(t), idx, rel) if cfg.decoder == "local" else attn(x, t))
        out = self.out(x).squeeze(-1)
        return out if prior is None else out + prior

    def decode(self, latents: Latent, queries: torch.Tensor, *, chunk: int | None = None) -> torch.Tensor:
        """Truncated signed distance at ``queries``: (B, Q) in [−τ, τ], negative inside.

        latents : :class:`Latent` (B, K, 4 + F)
        queries : (B, Q, 3) normalised frame
        chunk   : decode at most this many queries per forward pass (saves memory)
        Differentiable wrt latents and queries (except where clamped).
        """
        if chunk is None or queries.shape[1] <= chunk:
            raw = self.decode_raw(latents, queries)
        else:
            raw = torch.cat([self.decode_raw(latents, queries[:, s : s + chunk])
                             for s in range(0, queries.shape[1], chunk)], dim=1)
        return self.config.truncation * raw.clamp(-1.0, 1.0)

    def forward(self, points, normals, centers, radii, queries, class_index=None) -> torch.Tensor:
        """``decode(encode(...), queries)``: (B, Q) truncated SDF."""
        return self.decode(self.encode(points, normals, centers, radii, class_index), queries)

    # ------------------------------------------------------------------ losses
    def loss(
        self,
        latents: Latent,
        queries: torch.Tensor,
        sdf: torch.Tensor,
        *,
        skeleton_edges: int = 2,
    ) -> dict[str, torch.Tensor]:
        """Training loss (METHOD §5), in units of τ.

        ``sdf``   : (B, Q) exact SDF at ``queries`` (negative inside, normalised units)
        returns   : dict with ``total``, ``sdf`` (MSE of the truncated SDF / τ) and
                    ``skeleton`` (constraint: the decoded SDF at each skeletal centre and at
                    the midpoints to its ``skeleton_edges`` nearest skeletal neighbours equals
                    −radius (resp. −mean radius), truncated; 0 when the weight is 0).
        """
        cfg = self.config
        if tuple(sdf.shape) != tuple(queries.shape[:2]):
            raise SkellabError(f"sdf must have shape {tuple(queries.shape[:2])}, got {tuple(sdf.shape)}")
        tau = cfg.truncation
        target = (sdf / tau).clamp(-1.0, 1.0)
        l_sdf = F.mse_loss(self.decode_raw(latents, queries), target)
        l_skel = queries.new_zeros(())
        if cfg.skeleton_weight > 0 and cfg.token_source == "skeleton":
            c, r = latents.centers.detach(), latents.radii.detach()
            kk = min(skeleton_edges, c.shape[1] - 1)
            pts, tgt = [c], [-r]
            if kk > 0:
                _, nb = knn(c, c, kk, exclude_self=True)  # (B, K, kk)
                pts.append(0.5 * (c.unsqueeze(2) + gather(c, nb)).flatten(1, 2))
                tgt.append(-0.5 * (r.unsqueeze(2) + torch.gather(r, 1, nb.flatten(1)).view_as(nb)).flatten(1))
            q_s, t_s = torch.cat(pts, 1), (torch.cat(tgt, 1) / tau).clamp(-1.0, 1.0)
            l_skel = F.mse_loss(self.decode_raw(latents, q_s), t_s)
        total = cfg.sdf_weight * l_sdf + cfg.skeleton_weight * l_skel
        return {"total": total, "sdf": l_sdf.detach(), "skeleton": l_skel.detach()}


def _check_points(x: Any, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != 3:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise SkellabError(f"{name} must be a (B, N, 3) tensor, got {shape}")
