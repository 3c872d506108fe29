"""Torch helpers shared by every layer: which device and precision to run on, the device a module lives on,
`sample_actions` (a policy's actions from its logits, argmax or sampled) and `one_torch_thread()`, torch on one
intra-op thread inside the block.

Much of the workbench's work is many small and middling tensor ops (probe fitting, single frames in the dashboard,
small batches from several request threads). On a few CPU cores a second intra-op thread gains them little, and
when another process keeps a core busy every op waits for the descheduled thread. One thread is the robust
default; run several jobs side by side to use more cores.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from workbench.common.errors import ConfigError


@contextmanager
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_precision(precision: str, device: str) -> str:
    """auto: bf16 where the device runs it fast (CUDA with bf16, CPUs with AMX or avx512_bf16), else fp32."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision={precision!r}: use auto, fp32 or bf16.")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:  # oneDNN's bf16 kernels need avx512_bf16 or AMX; elsewhere bf16 on CPU is slower than fp32
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def resolve_device(device: str) -> str:
    """cpu, cuda, cuda:N, or auto (cuda when torch sees a GPU); a CUDA device that is not there is a ConfigError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device={device!r}: use cpu, cuda or auto.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible to torch: use --device cpu or auto.")
    return device


def sample_actions(logits: torch.Tensor, deterministic: bool = False, generator=None) -> torch.Tensor:
    """Actions [B] from logits [B, n_actions]: the argmax, or one draw per row from their softmax, made with
    `generator`: a torch.Generator (torch.multinomial) or a numpy Generator (`choice`, row by row, over the
    probabilities in float64, as the dashboard's single episodes draw them)."""
    if deterministic:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float(), -1)
    if isinstance(generator, np.random.Generator):
        rows = probs.detach().cpu().numpy().astype(np.float64)
        return torch.as_tensor([generator.choice(len(p), p=p / p.sum()) for p in rows], dtype=torch.int64)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's parameters (CPU for a module without any)."""
    return next(module.parameters(), torch.empty(0)).device
