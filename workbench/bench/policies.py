"""How much the hooks cost: our hooked transformer policy against a plain torch one and TL's TransformerBridge.

`bench_transformer_forward()` times, at batch 256 on the default 18x18 observation (9 patch tokens + readout):

- ours:         `TransformerPolicy` with no hooks attached (fused attention), and with a do-nothing hook on
                each pattern (the explicit softmax that any pattern hook, run_with_cache's included, switches to),
- plain:        the same patch embedding, readout and heads around `nn.TransformerEncoder` (pre-LN, ReLU, no
                dropout), the fastest stock torch equivalent,
- bridge:       `TransformerBridge.boot_native` of the same size. It takes token ids or embeddings, not images,
                so it is timed on `[B, 10, d_model]` embeddings: no patch embedding, a 5-way unembed per token.

"forward" is eval mode under no_grad (an SB3 rollout step); "forward_backward" is train mode with a backward
through logits and value (a PPO minibatch). Each figure is the median of `repeats` runs after warm-up, in ms,
with the models taking turns. Use a quiet machine: a second busy process on these 2 cores makes 2-thread torch
runs ~25x slower (and the ratios meaningless); `threads=1` stays usable there.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from workbench.policies.transformer import TransformerPolicy

BATCH = 256
OBS_SHAPE = (3, 18, 18)
N_ACTIONS = 5


class PlainTransformerPolicy(nn.Module):
    """The same computation as `TransformerPolicy` (fused path) in stock torch modules, without hooks."""

    def __init__(self, ours: TransformerPolicy):
        super().__init__()
        cfg = ours.config()
        d_model = cfg["d_model"]
        self.patch_embed = nn.Conv2d(OBS_SHAPE[0], d_model, kernel_size=2 * cfg["patch"], stride=2 * cfg["patch"])
        self.readout = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, ours.n_tokens, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, cfg["n_heads"], cfg["d_mlp"], dropout=0.0, activation="relu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg["n_layers"], enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(d_model)
        self.actor = nn.Linear(d_model, N_ACTIONS)
        self.critic = nn.Linear(d_model, 1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        patches = self.patch_embed(obs.to(torch.float32) / 255.0).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.readout.expand(patches.shape[0], -1, -1), patches], dim=1) + self.pos_embed
        readout = self.ln_final(self.encoder(tokens))[:, 0]
        return self.actor(readout), self.critic(readout).squeeze(-1)


def _boot_bridge(ours: TransformerPolicy) -> nn.Module:
    """TL's TransformerBridge around its native model, sized like ours (bidirectional, pre-LN, ReLU)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources import native  # noqa: F401  (attaches boot_native)

    cfg = ours.config()
    bridge_cfg = TransformerBridgeConfig(
        d_model=cfg["d_model"],
        d_head=cfg["d_model"] // cfg["n_heads"],
        n_heads=cfg["n_heads"],
        n_layers=cfg["n_layers"],
        d_mlp=cfg["d_mlp"],
        n_ctx=ours.n_tokens,
        d_vocab=N_ACTIONS,
        act_fn="relu",
        attention_dir="bidirectional",
        normalization_type="LN",
        seed=0,
    )
    return TransformerBridge.boot_native(bridge_cfg)


def _interleaved_median_ms(steps: dict[str, Callable[[], Any]], repeats: int, rounds: int = 5) -> dict[str, float]:
    """Median ms per step; the models take turns in short rounds, so a busy spell on the shared cores (or the
    allocator's state, which swings small-tensor code by ~1.5x here) falls on all of them alike."""
    for step in steps.values():
        for _ in range(3):  # warm-up: thread pool, weight layouts, allocator
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            for _ in range(max(1, repeats // rounds)):
                start = time.perf_counter()
                step()
                samples[name].append(time.perf_counter() - start)
    return {f"{name}_ms": 1e3 * statistics.median(times) for name, times in samples.items()}


def _forward_step(model: nn.Module, x: Tensor) -> Callable[[], Any]:
    def step() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    return step


def _forward_backward_step(model: nn.Module, x: Tensor, loss: Callable[[Any], Tensor]) -> Callable[[], None]:
    def step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        loss(model(x)).backward()

    return step


def _watching_patterns(model: TransformerPolicy, step: Callable[[], Any]) -> Callable[[], Any]:
    """The step with a do-nothing hook on every attention pattern, which switches to the explicit softmax."""

    def watched() -> None:
        with model.hooks(fwd_hooks=[(lambda name: name.endswith("hook_pattern"), lambda act, hook: None)]):
            step()

    return watched


def bench_transformer_forward(repeats: int = 20, threads: int | None = None) -> dict[str, Any]:
    """Median ms per call and ratios to plain torch; see the module docstring for what each figure is.

    `threads` defaults to every core this process may use; pass 1 to see the per-core cost on a busy machine.
    """
    previous_threads = torch.get_num_threads()
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        ours = TransformerPolicy(OBS_SHAPE, N_ACTIONS)
        plain = PlainTransformerPolicy(ours)
        obs = torch.randint(0, 256, (BATCH, *OBS_SHAPE), dtype=torch.uint8)
        policy_loss = lambda out: out[0].sum() + out[1].sum()  # noqa: E731
        forward = {"ours": _forward_step(ours, obs), "plain": _forward_step(plain, obs)}
        forward_backward = {
            "ours": _forward_backward_step(ours, obs, policy_loss),
            "plain": _forward_backward_step(plain, obs, policy_loss),
        }
        for steps in (forward, forward_backward):
            steps["ours_explicit_attention"] = _watching_patterns(ours, steps["ours"])

        result: dict[str, Any] = {"batch_size": BATCH, "n_tokens": ours.n_tokens, "threads": threads}
        try:
            bridge = _boot_bridge(ours)
            embeddings = torch.randn(BATCH, ours.n_tokens, ours.config()["d_model"])
            forward["bridge"] = _forward_step(bridge, embeddings)
            forward_backward["bridge"] = _forward_backward_step(bridge, embeddings, lambda logits: logits.sum())
        except Exception as error:  # the bridge is a reference point only; say why it is missing
            result["bridge_error"] = f"{type(error).__name__}: {error}"

        for mode, steps in (("forward", forward), ("forward_backward", forward_backward)):
            timings = _interleaved_median_ms(steps, repeats)
            for name in steps:
                if name != "plain":
                    timings[f"{name}_vs_plain"] = timings[f"{name}_ms"] / timings["plain_ms"]
            result[mode] = timings
        return result
    finally:
        torch.set_num_threads(previous_threads)
