"""Hook names by role, per architecture, in the spirit of TransformerLens' `get_act_name`: code that means "the
residual stream before the last block" asks for it by role instead of spelling the name.

    act_name(policy, "conv", -1)          # 'conv.1.hook_out' on the two-layer CNN (negative layers count from the end)
    act_name("transformer", "pattern", 0) # 'blocks.0.attn.hook_pattern'
    role_of("blocks.1.hook_resid_post")   # ('resid_post', 1)
    with_roles(policy.hook_dict, "conv", "fc")   # those hooks, in the policy's order

Roles are only defined for the workbench's own policies; an outside model (an SB3 view) has no roles, and code
that needs one asks the user for hook names instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from workbench.common.errors import ConfigError, unknown_name

# role -> name template ({layer} for per-layer roles), per architecture
ROLES: dict[str, dict[str, str]] = {
    "cnn": {
        "obs": "hook_obs",
        "conv": "conv.{layer}.hook_out",
        "fc": "fc.hook_out",
        "logits": "hook_logits",
        "value": "hook_value",
    },
    "transformer": {
        "obs": "hook_obs",
        "stem": "stem.hook_out",
        "embed": "hook_embed",
        "pos_embed": "hook_pos_embed",
        "resid_pre": "blocks.{layer}.hook_resid_pre",
        "ln1": "blocks.{layer}.ln1.hook_normalized",
        "q": "blocks.{layer}.attn.hook_q",
        "k": "blocks.{layer}.attn.hook_k",
        "v": "blocks.{layer}.attn.hook_v",
        "scores": "blocks.{layer}.attn.hook_attn_scores",
        "pattern": "blocks.{layer}.attn.hook_pattern",
        "z": "blocks.{layer}.attn.hook_z",
        "attn_out": "blocks.{layer}.hook_attn_out",
        "resid_mid": "blocks.{layer}.hook_resid_mid",
        "ln2": "blocks.{layer}.ln2.hook_normalized",
        "mlp_pre": "blocks.{layer}.mlp.hook_pre",
        "mlp_post": "blocks.{layer}.mlp.hook_post",
        "mlp_out": "blocks.{layer}.hook_mlp_out",
        "resid_post": "blocks.{layer}.hook_resid_post",
        "ln_final": "ln_final.hook_normalized",
        "logits": "hook_logits",
        "value": "hook_value",
    },
}
# What the layer index counts, per architecture: the policy's module list of per-layer roles.
LAYERS = {"cnn": "conv", "transformer": "blocks"}

_PATTERNS = {
    arch: [
        (role, re.compile("^" + re.escape(template).replace(re.escape("{layer}"), r"(\d+)") + "$"))
        for role, template in roles.items()
    ]
    for arch, roles in ROLES.items()
}


def arch_of(policy_or_arch) -> str:
    """The architecture name of a policy (its `arch`) or the name itself; ConfigError for one without roles."""
    arch = policy_or_arch if isinstance(policy_or_arch, str) else getattr(policy_or_arch, "arch", None)
    if arch not in ROLES:
        raise ConfigError(
            f"hook roles are defined for the workbench's own policies ({', '.join(ROLES)}), not for "
            f"{arch or type(policy_or_arch).__name__}: name its hooks instead (`workbench hooks CKPT` lists them)."
        )
    return arch


def n_layers(policy) -> int:
    """How many layers the policy's per-layer roles have (conv layers, transformer blocks)."""
    return len(getattr(policy, LAYERS[arch_of(policy)]))


def act_name(policy_or_arch, role: str, layer: int | None = None) -> str:
    """The hook name of `role` (at `layer` for per-layer roles). With a policy, a negative layer counts from the
    end (-1: the last); with an architecture name, the layer must be given as a non-negative index."""
    arch = arch_of(policy_or_arch)
    if role not in ROLES[arch]:
        raise unknown_name(f"{arch} hook role", role, ROLES[arch])
    template = ROLES[arch][role]
    if "{layer}" not in template:
        if layer is not None:
            raise ConfigError(f"the {arch} role {role!r} has one hook, not one per layer: leave the layer out.")
        return template
    if layer is None:
        raise ConfigError(f"the {arch} role {role!r} has one hook per layer: pass a layer (-1 for the last).")
    if layer < 0:
        if isinstance(policy_or_arch, str):
            raise ConfigError(f"layer {layer}: counting from the end needs the policy, not its architecture name.")
        count = n_layers(policy_or_arch)
        if layer < -count:
            raise ConfigError(f"layer {layer}: this {arch} has {count} layers (-{count} to {count - 1}).")
        layer += count
    return template.format(layer=int(layer))


def role_of(hook: str, arch: str | None = None) -> tuple[str, int | None] | None:
    """(role, layer) of a hook name (layer None for one-per-policy roles), or None when it has no role. `arch`
    narrows the search to one architecture."""
    for name in [arch] if arch is not None else list(ROLES):
        for role, pattern in _PATTERNS[name]:
            match = pattern.match(hook)
            if match:
                return role, int(match.group(1)) if match.groups() else None
    return None


def with_roles(hooks: Iterable[str], *roles: str, arch: str | None = None) -> list[str]:
    """The hooks among `hooks` whose role is one of `roles`, in the order given."""
    chosen = []
    for hook in hooks:
        found = role_of(hook, arch)
        if found is not None and found[0] in roles:
            chosen.append(hook)
    return chosen
