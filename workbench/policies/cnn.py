"""A small CNN actor-critic whose every layer output is a TransformerLens hook.

    obs [B,3,H,W] ─► /255 (hook_obs)
        ─► conv.0: 2x2 stride 2, one vector per grid cell, ReLU   (conv.0.hook_out [B, c0, H/2, W/2])
        ─► conv.i: 3x3 pad 1, ReLU, for each further channel count (conv.i.hook_out [B, ci, H/2, W/2])
        ─► flatten ─► fc: Linear, ReLU                            (fc.hook_out     [B, hidden])
        ─► actor: logits (hook_logits [B, n_actions]),  critic: value (hook_value [B])

Because conv.0 cuts exactly one 2x2 cell per output position, conv.i.hook_out[:, :, y, x] is about grid cell
(y, x), which is what probes and patching index by. The fc layer sees the whole grid, so parameters grow with
the room's area: ~338k at the default 9x9 grid, ~0.8M at 14x14.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from workbench.common.errors import ConfigError
from workbench.policies.base import HookedPolicy, positive_int


class HookedConv(nn.Conv2d):
    """Conv2d then ReLU; the post-ReLU map is at `hook_out`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hook_out = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        return self.hook_out(F.relu(super().forward(x)))


class HookedLinear(nn.Linear):
    """Linear then ReLU; the post-ReLU vector is at `hook_out`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hook_out = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        return self.hook_out(F.relu(super().forward(x)))


class CNNPolicy(HookedPolicy):
    """CNN actor-critic. `channels`: 1 to 3 conv layers (the first is the per-cell 2x2 conv); `hidden`: fc width."""

    arch = "cnn"

    def __init__(
        self,
        obs_shape: tuple[int, int, int],
        n_actions: int,
        channels: list[int] | tuple[int, ...] = (16, 32),
        hidden: int = 128,
    ):
        channels = list(channels) if isinstance(channels, list | tuple) else channels
        if not isinstance(channels, list) or not 1 <= len(channels) <= 3:
            raise ConfigError(f"channels must list 1 to 3 conv widths, e.g. [16, 32]; got {channels!r}.")
        channels = [positive_int("each of channels", c) for c in channels]
        hidden = positive_int("hidden", hidden)
        super().__init__(obs_shape, n_actions, arch_kwargs={"channels": channels, "hidden": hidden})

        in_channels, height, width = self.obs_shape
        self.conv = nn.ModuleList(
            [HookedConv(in_channels, channels[0], kernel_size=2, stride=2)]
            + [HookedConv(c_in, c_out, kernel_size=3, padding=1) for c_in, c_out in pairwise(channels)]
        )
        cells = (height // 2) * (width // 2)
        self.fc = HookedLinear(channels[-1] * cells, hidden)
        # CleanRL's init for ReLU bodies: orthogonal with gain sqrt(2), zero bias.
        for layer in [*self.conv, self.fc]:
            nn.init.orthogonal_(layer.weight, math.sqrt(2))
            nn.init.zeros_(layer.bias)
        self._add_heads(hidden)
        self.setup()

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """`obs [B, C, H, W]` (uint8 or float 0..255) -> `(logits [B, n_actions], value [B])`."""
        x = self.normalise(obs)
        for conv in self.conv:
            x = conv(x)
        return self._heads(self.fc(x.flatten(1)))
