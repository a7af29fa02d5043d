"""Which linear layers an adapter wraps.

Target names follow PEFT: a plain name matches modules whose path ends with ``.name``
(``q_proj`` matches ``model.layers.3.self_attn.q_proj``); a name containing regex characters is
matched as a full regex against the module path. Paths are those inside the LLaMA causal LM
(what PEFT sees), so default targets never touch the vision tower. Prefix a name with
``vision:`` to target the CLIP tower instead (``vision:q_proj``), matched against the tower's
paths ``vision_model.encoder.layers.N.self_attn.q_proj``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mobilepeft.errors import UserError

if TYPE_CHECKING:  # torch loads only where modules are searched: the CLI reads the names without it
    from torch import nn

LLM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_PREFIX = "vision:"
#: Internal module prefixes of the two adaptable parts of MobileVLMForCausalLM.
LLM_ROOT = "llm."
VISION_ROOT = "vision_tower.vision_tower."


def _matches(name: str, path: str) -> bool:
    if re.fullmatch(r"[\w.]+", name):
        return path == name or path.endswith("." + name)
    return re.fullmatch(name, path) is not None


def pattern_lookup(pattern: dict[str, float], path: str) -> float | None:
    """PEFT's rank_pattern/alpha_pattern rule: first key matching as a dotted suffix or full regex."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?{key}$", path) or _matches(key, path):
            return value
    return None


def pattern_path(internal_path: str) -> str:
    """The path rank_pattern/alpha_pattern keys are matched against (PEFT's view for LLM modules)."""
    for root in (LLM_ROOT, VISION_ROOT):
        if internal_path.startswith(root):
            return internal_path[len(root):]
    return internal_path


def find_targets(model: nn.Module, target_modules: list[str]) -> dict[str, nn.Linear]:
    """Internal module path -> nn.Linear for every target; errors on names that match nothing."""
    from torch import nn

    found: dict[str, nn.Linear] = {}
    for name in target_modules:
        vision = name.startswith(VISION_PREFIX)
        pattern = name[len(VISION_PREFIX):] if vision else name
        root = VISION_ROOT if vision else LLM_ROOT
        hits = 0
        for path, module in model.named_modules():
            if not path.startswith(root) or not isinstance(module, nn.Linear):
                continue
            rel = path[len(root):]
            if not vision and not rel.startswith("model.layers."):
                continue  # never lm_head or embeddings
            if _matches(pattern, rel):
                found[path] = module
                hits += 1
        if hits == 0:
            where = "CLIP vision tower" if vision else "LLM decoder layers"
            raise UserError(f"target module {name!r} matches no linear layer in the {where}",
                            field="target_modules",
                            hint=f"LLM linears are {', '.join(LLM_LINEARS)}; vision ones e.g. vision:q_proj, vision:fc1")
    return found
