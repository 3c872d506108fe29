"""The CLI's option parsers: each value is checked where typer parses it, so a bad option is one line before any
work starts (`workbench.common.guards` holds the checks themselves, shared with library callers).

    count("--steps", 1, 10**8)("1e6")        # 1_000_000 (scientific form accepted), or BadValue
    number("--coef", -1e6, 1e6)("nan")        # finite and in range, or BadValue
    parse_pairs(["room_size=9"], "-o", env_types())   # key=value options, typed per key, null and NaN refused
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import typer

from workbench.common import guards
from workbench.common.errors import ConfigError
from workbench.envs.config import MAX_STEPS as MAX_EPISODE_STEPS  # -o max_steps: eval cannot run forever
from workbench.training.config import FAST_PPO

SEED_MAX = guards.SEED_MAX


class BadValue(typer.BadParameter):
    """An option value refused where it is parsed (the CLI reports it as one line and as a ConfigError)."""


def _shown(option: str, value) -> str:
    """How a refusal names the value: `key=value` for an option (`--n-random -3`: n_random=-3)."""
    key = option.lstrip("-").replace("-", "_")
    return f"{key}={str(value).strip() if isinstance(value, str) else value}"


def count(option: str, lo: int, hi: int, unit: str | None = None):
    """A typer parser for an integer option in [lo, hi] (`typer.Option(..., parser=count("--steps", 1, 10**8))`);
    `unit` names what is counted ("episode") in the refusal of a value below lo."""

    def parse(value):
        if value is None:
            return None
        try:
            return guards.integer(value, _shown(option, value), lo, hi, unit)
        except ConfigError as err:
            raise BadValue(str(err)) from None

    parse.__name__ = f"integer from {lo} to {hi}"
    return parse


def seed(option: str = "--seed"):
    """A typer parser for a seed: an integer from 0 to 2**32 - 1."""
    return count(option, 0, SEED_MAX)


def number(option: str, lo: float, hi: float):
    """A typer parser for a float option: finite, in [lo, hi]."""

    def parse(value):
        if value is None:
            return None
        try:
            return guards.real(value, _shown(option, value), lo, hi)
        except ConfigError as err:
            raise BadValue(str(err)) from None

    parse.__name__ = f"number from {lo:g} to {hi:g}"
    return parse


def names(values: list[str], option: str) -> list[str] | None:
    """Repeatable, comma-separated names (`--labels a,b --labels c`); None when the option was not given."""
    return guards.split_names(values, option)


# Ranges of the numeric options the commands share, checked where typer parses them (count: 1e6 form accepted).
SEED = seed()
EPISODES_MAX = 10_000_000  # besides the memory check, which is what usually refuses first
PAIRS_MAX = 10_000_000


# ---------------------------------------------------------------------------------------------- key=value options
# Types of key=value options: "int" | "float" | "bool" | "str", optionally with a (lo, hi) range checked here.
# --ppo: every PPO setting, typed as FAST_PPO holds it (n_envs, n_steps, batch_size, n_epochs: int; the rest float).
PPO_TYPES = {key: "int" if isinstance(value, int) else "float" for key, value in FAST_PPO.items()}
RANGES = {"max_steps": (1, MAX_EPISODE_STEPS)}


def env_types() -> dict[str, str]:
    """The type of every environment option, read from EnvConfig's fields (`int | None` is int: null is refused)."""
    from workbench.envs import EnvConfig

    kinds = {}
    for f in dataclasses.fields(EnvConfig):
        text = str(f.type)
        kinds[f.name] = next((k for k in ("bool", "int", "float", "str") if re.search(rf"\b{k}\b", text)), "str")
    return kinds


def parse_pairs(pairs: list[str], option: str, types: dict[str, str] | None = None) -> dict:
    """`key=value` strings to a dict; values are JSON where they parse (numbers, true/false), text otherwise.
    Keys in `types` must hold that type (an integer-valued float such as 1e5 counts as an int; true is not a
    number); null, NaN and infinity are refused for every key, and keys in RANGES must lie in their range."""
    types = types or {}
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option} {pair!r} is not key=value: write e.g. {option} room_size=9.")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{option} {key}={text}: {text!r} is not a value; leave {key} out for its default.")
        if isinstance(value, list | dict):
            raise ConfigError(f"{option} {key}={text}: give one number, word, true or false, not a JSON "
                              f"{type(value).__name__}.")  # fmt: skip
        kind = types.get(key)
        where = f"{option} {key}={text}"
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
                raise ConfigError(f"{where}: use a whole number.")
            value = int(value)
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}: use a number.")
            value = float(value)
        elif kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{where}: use true or false.")
        elif kind == "str" and not isinstance(value, str):
            value = text  # a name that happens to parse as a number (a colour "1"): the text as given
        if key in RANGES and not isinstance(value, bool) and isinstance(value, int | float):
            lo, hi = RANGES[key]
            if not lo <= value <= hi:
                raise ConfigError(f"{where} is out of range: use a whole number from {lo:,} to {hi:,}.")
        options[key] = value
    return options


def parse_options(pairs: list[str], option: str = "-o") -> dict:
    """`-o key=value` env options: typed per EnvConfig field (null, NaN and true-for-a-number refused), max_steps
    capped (MAX_EPISODE_STEPS); other keys (a MiniGrid env's kwargs) as JSON values or text."""
    return parse_pairs(pairs, option, env_types())
