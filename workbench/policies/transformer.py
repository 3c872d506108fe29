"""A small ViT-style actor-critic, written with TransformerLens' hook names.

    obs [B,3,H,W] ─► /255 (hook_obs) ─► zero-pad bottom/right to whole patches
        ─► patch_embed: one token per `patch` x `patch` grid cells, plus a learned readout token at position 0
           (hook_embed [B, pos, d_model]),  + learned position embeddings (hook_pos_embed [B, pos, d_model])
        ─► n_layers pre-LayerNorm blocks with bidirectional attention and a ReLU MLP:
             resid_pre ─► ln1 ─► attn (q, k, v, attn_scores, pattern, z) ─► attn_out ─► + ─► resid_mid
             resid_mid ─► ln2 ─► mlp (pre, post) ─► mlp_out ─► + ─► resid_post
        ─► ln_final ─► readout token ─► actor: logits (hook_logits [B, n_actions]), critic: value (hook_value [B])

Token count is what costs time at this size (a token per cell made the transformer far slower than the CNN),
hence patches: the default 9x9-cell grid with 3x3-cell patches gives 9 patch tokens + 1 readout. Grids that are not a
multiple of `patch` cells are zero-padded at the bottom and right; the padded cells sit at fixed positions, so
the position embeddings tell them apart from black cells inside the room.

Attention takes the fused `scaled_dot_product_attention` kernel unless a hook is attached to that layer's
`attn.hook_attn_scores` or `attn.hook_pattern`; then it computes the softmax explicitly so the pattern can be
read or edited. The two paths agree to float rounding (~1e-6). `run_with_cache` attaches hooks everywhere, so it
always takes the explicit path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from workbench.common.errors import ConfigError
from workbench.policies.base import HookedPolicy, positive_int
from workbench.policies.cnn import HookedConv


class HookedLayerNorm(nn.LayerNorm):
    """LayerNorm whose output (after its scale and bias) is at `hook_normalized`."""

    def __init__(self, d_model: int):
        super().__init__(d_model)
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        return self.hook_normalized(super().forward(x))


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with TL's hooks; q, k, v, z are `[B, pos, head, d_head]`."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        # One matmul for q, k and v; W_Q is qkv.weight[:d_model], W_K the next d_model rows, then W_V.
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()  # [B, head, query, key], before softmax
        self.hook_pattern = HookPoint()  # [B, head, query, key]
        self.hook_z = HookPoint()

    def pattern_is_hooked(self) -> bool:
        """Whether a hook is attached to the scores or the pattern (through TransformerLens: `add_hook`, `hooks`,
        `run_with_hooks`, `run_with_cache`); otherwise the fused kernel runs and they are never materialised."""
        return self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks()

    def forward(self, x: Tensor, fused: bool | None = None) -> Tensor:
        """`fused=None` picks the fused kernel when the pattern is not hooked; True/False force a path."""
        batch, n_pos, d_model = x.shape
        qkv = self.qkv(x).view(batch, n_pos, 3, self.n_heads, self.d_head)
        # Indexing (not unbind) so a hook may edit q, k or v in place under autograd.
        q = self.hook_q(qkv[:, :, 0])
        k = self.hook_k(qkv[:, :, 1])
        v = self.hook_v(qkv[:, :, 2])
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # -> [B, head, pos, d_head]
        if fused is None:
            fused = not self.pattern_is_hooked()
        if fused:
            z = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = self.hook_attn_scores(q @ k.transpose(-1, -2) / math.sqrt(self.d_head))
            pattern = self.hook_pattern(scores.softmax(dim=-1))
            z = pattern @ v
        z = self.hook_z(z.transpose(1, 2))  # -> [B, pos, head, d_head]
        return self.out(z.reshape(batch, n_pos, d_model))


class MLP(nn.Module):
    """Linear, ReLU, Linear; `hook_pre` before and `hook_post` after the ReLU, `[B, pos, d_mlp]`."""

    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.W_in = nn.Linear(d_model, d_mlp)
        self.W_out = nn.Linear(d_mlp, d_model)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        return self.W_out(self.hook_post(F.relu(self.hook_pre(self.W_in(x)))))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm residual block; every residual and sublayer output is hooked `[B, pos, d_model]`."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.ln1 = HookedLayerNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.ln2 = HookedLayerNorm(d_model)
        self.mlp = MLP(d_model, d_mlp)
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor, fused: bool | None = None) -> Tensor:
        resid_pre = self.hook_resid_pre(resid)
        resid_mid = self.hook_resid_mid(resid_pre + self.hook_attn_out(self.attn(self.ln1(resid_pre), fused)))
        return self.hook_resid_post(resid_mid + self.hook_mlp_out(self.mlp(self.ln2(resid_mid))))


class TransformerPolicy(HookedPolicy):
    """ViT-style actor-critic over `patch` x `patch`-cell tokens plus a readout token (see module docstring)."""

    arch = "transformer"

    def __init__(
        self,
        obs_shape: tuple[int, int, int],
        n_actions: int,
        patch: int = 3,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        d_mlp: int = 256,
        stem: int = 0,
    ):
        stem = int(stem) if isinstance(stem, int) and not isinstance(stem, bool) and stem >= 0 else -1
        if stem < 0:
            raise ConfigError("stem must be an integer >= 0: channels of the per-cell conv stem, 0 for none.")
        patch, d_model, n_heads, n_layers, d_mlp = (
            positive_int(name, value)
            for name, value in [
                ("patch", patch),
                ("d_model", d_model),
                ("n_heads", n_heads),
                ("n_layers", n_layers),
                ("d_mlp", d_mlp),
            ]
        )
        if d_model % n_heads:
            raise ConfigError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}); try d_model=64, 4 heads.")
        if n_layers > 4:
            raise ConfigError(f"n_layers must be 1 to 4 (small policies are the point), got {n_layers}.")
        arch_kwargs = dict(patch=patch, d_model=d_model, n_heads=n_heads, n_layers=n_layers, d_mlp=d_mlp, stem=stem)
        super().__init__(obs_shape, n_actions, arch_kwargs)

        in_channels, height, width = self.obs_shape
        cells_y, cells_x = height // 2, width // 2
        if patch > max(cells_y, cells_x):
            raise ConfigError(
                f"patch of {patch} cells is larger than the {cells_y}x{cells_x}-cell grid; use patch <= "
                f"{max(cells_y, cells_x)} (3 is the default)."
            )
        patches_y, patches_x = math.ceil(cells_y / patch), math.ceil(cells_x / patch)
        # Pixels of zero padding that make the grid a whole number of patches (F.pad order: left, right, top, bottom).
        self.pad = (0, 2 * (patches_x * patch - cells_x), 0, 2 * (patches_y * patch - cells_y))
        self.n_tokens = 1 + patches_y * patches_x

        # Optional per-cell stem (one nonlinear feature vector per grid cell, as the CNN's first layer), then a
        # conv with kernel = stride = patch size: a linear map of each flattened patch.
        if stem:
            self.stem = HookedConv(in_channels, stem, kernel_size=2, stride=2)
            self.patch_embed = nn.Conv2d(stem, d_model, kernel_size=patch, stride=patch)
        else:
            self.stem = None
            self.patch_embed = nn.Conv2d(in_channels, d_model, kernel_size=2 * patch, stride=2 * patch)
        self.readout = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, self.n_tokens, d_model) * 0.02)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList([TransformerBlock(d_model, n_heads, d_mlp) for _ in range(n_layers)])
        self.ln_final = HookedLayerNorm(d_model)
        self._add_heads(d_model)
        self.setup()

    def forward(self, obs: Tensor, fused: bool | None = None) -> tuple[Tensor, Tensor]:
        """`obs [B, C, H, W]` (uint8 or float 0..255) -> `(logits [B, n_actions], value [B])`.

        `fused` forces the attention path in every layer (for tests and benchmarks); None decides per layer.
        """
        x = self.normalise(obs)
        if any(self.pad):
            x = F.pad(x, self.pad)
        if self.stem is not None:
            x = self.stem(x)
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, patches, d_model], row-major cells
        batch = patches.shape[0]
        embed = self.hook_embed(torch.cat([self.readout.expand(batch, -1, -1), patches], dim=1))
        # A real copy per batch row, as in TL, so hooks may edit it in place.
        pos_embed = self.hook_pos_embed(self.pos_embed.repeat(batch, 1, 1))
        resid = embed + pos_embed
        for block in self.blocks:
            resid = block(resid, fused)
        return self._heads(self.ln_final(resid)[:, 0])
