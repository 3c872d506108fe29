"""Counter-based randomness for the rooms: every draw is a pure function of (env key, episode, stream, column), so
an episode's layout does not depend on the batch size, the order of resets or anything drawn before it."""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective scramble of uint64 (wrapping arithmetic is intended)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniforms(key: np.ndarray, episode: np.ndarray, stream: int, n: int) -> np.ndarray:
    """[M, n] floats in [0, 1), a pure function of (key, episode, stream, column)."""
    base = _mix(_mix(key.astype(np.uint64) * _GOLDEN + np.uint64(stream)) + episode.astype(np.uint64))
    x = _mix(base[:, None] + np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


STREAM_LAYOUT, STREAM_CHOICE, STREAM_LOTTERY = 1, 100, 1 << 20  # STREAM_CHOICE uses 100 + round (< 10,000)
