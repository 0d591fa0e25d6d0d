"""Key mapping machinery shared by the converters: ordered regex rules from a source
checkpoint's keys to this project's model keys, with a report of what could not be placed.

Detectron2 does the same for Caffe2 / torchvision weights with fixed renames
(``detectron2/checkpoint/c2_model_loading.py``, ``convert_basic_c2_names``;
``tools/convert-torchvision-to-d2.py``); here every source key must be placed by exactly one
rule, or dropped by a rule that says why, so that a checkpoint of another layout is an error
naming its keys instead of a half-converted model.
"""
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["Rule", "CheckpointLayoutError", "apply_rules", "check_against_model"]

Transform = Callable[[Tensor], Tensor]


class CheckpointLayoutError(ValueError):
    """A source checkpoint whose keys do not fit the converter's layout (or the target model)."""


@dataclass(frozen=True)
class Rule:
    """
    ``pattern`` (a regex matched against the whole source key) -> ``replacement``: a
    ``re.Match.expand`` template, or a function of the match returning the new key (or ``None``
    when the rule does not place this key after all); ``None`` drops the key, with ``why``
    saying why. ``transform`` is then applied to the value.
    """

    pattern: str
    replacement: Union[None, str, Callable[["re.Match"], Optional[str]]]
    transform: Optional[Transform] = None
    why: str = ""
    _compiled: "re.Pattern" = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_compiled", re.compile(self.pattern))

    def match(self, key: str) -> Optional["re.Match"]:
        return self._compiled.fullmatch(key)


def _preview(keys: Sequence[str], limit: int = 12) -> str:
    """The keys, or for many: the first key of each module (first two name components), so that
    every part of a foreign layout shows, and the count."""
    keys = sorted(keys)
    if len(keys) <= limit:
        return ", ".join(keys)
    firsts: Dict[str, str] = {}
    for k in keys:
        firsts.setdefault(".".join(k.split(".")[:2]), k)
    shown = list(firsts.values())[: 2 * limit]
    return ", ".join(shown) + f", ... ({len(keys)} in all)"


def apply_rules(
    state_dict: Mapping[str, Tensor], rules: Sequence[Rule], source_name: str
) -> Tuple[Dict[str, Tensor], List[str]]:
    """
    Rename every key of ``state_dict`` by the first rule that matches it.

    Returns:
        the converted dict (values made contiguous float32 copies for floating tensors) and the
        source keys dropped on purpose.
    Raises:
        CheckpointLayoutError: naming the source keys no rule places, and two source keys that
            land on the same target key.
    """
    converted: Dict[str, Tensor] = {}
    origin: Dict[str, str] = {}
    dropped: List[str] = []
    unplaced: List[str] = []
    for key, value in state_dict.items():
        for rule in rules:
            m = rule.match(key)
            if m is None:
                continue
            if rule.replacement is None:
                dropped.append(key)
                break
            if callable(rule.replacement):
                new_key = rule.replacement(m)
                if new_key is None:
                    continue
            else:
                new_key = m.expand(rule.replacement)
            if new_key in converted:
                raise CheckpointLayoutError(
                    f"{source_name}: source keys {origin[new_key]!r} and {key!r} both map to "
                    f"{new_key!r}"
                )
            tensor = torch.as_tensor(value)
            if rule.transform is not None:
                tensor = rule.transform(tensor)
            converted[new_key] = tensor.detach().clone().contiguous()
            origin[new_key] = key
            break
        else:
            unplaced.append(key)
    if unplaced:
        raise CheckpointLayoutError(
            f"This checkpoint is not in the {source_name} layout: {len(unplaced)} of its "
            f"{len(state_dict)} keys cannot be placed: {_preview(unplaced)}"
            + (f"; placed: {_preview(list(origin.values()), 6)}" if origin else "")
        )
    return converted, dropped


def check_against_model(
    converted: Mapping[str, Tensor],
    model_state: Mapping[str, Tensor],
    source_name: str,
    config_hint: str = "",
) -> None:
    """
    Check that ``converted`` fills exactly the model's parameters and persistent buffers
    (Detectron2's FrozenBN has no ``num_batches_tracked``; a BN model's counters are ignored),
    with the same shapes.

    Raises:
        CheckpointLayoutError: naming the converted keys the model does not have (unused), the
            model keys left without a value (unfilled) and the shape mismatches.
    """
    wanted = {k for k in model_state if not k.endswith("num_batches_tracked")}
    unused = sorted(set(converted) - wanted)
    unfilled = sorted(wanted - set(converted))
    shapes = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(model_state[k].shape)}"
        for k in sorted(wanted & set(converted))
        if tuple(converted[k].shape) != tuple(model_state[k].shape)
    ]
    parts = []
    if unused:
        parts.append(f"{len(unused)} converted keys the model has no place for: {_preview(unused)}")
    if unfilled:
        parts.append(f"{len(unfilled)} model keys left unfilled: {_preview(unfilled)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: {'; '.join(shapes[:6])}")
    if parts:
        raise CheckpointLayoutError(
            f"The converted {source_name} checkpoint does not fit the model built from the "
            f"config{config_hint}: " + ". ".join(parts)
        )
