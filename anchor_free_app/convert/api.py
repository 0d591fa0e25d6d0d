"""Load a source checkpoint, convert its state dict, check it against the model of a config,
save it as a Detectron2 checkpoint."""
import copy
import logging
import os
import pickle
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .formats import SOURCES, detect_source, rules_for
from .mapping import CheckpointLayoutError, apply_rules, check_against_model

__all__ = ["load_source_checkpoint", "convert_state_dict", "convert_checkpoint"]

logger = logging.getLogger(__name__)


class _Placeholder:
    """Stands for a class of the source framework (mmengine / mmcv objects in ``meta``) that is
    not installed here; only the tensors of the state dict are used."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


class _PermissiveUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Placeholder,), {"__module__": module})


class _PermissivePickle:
    """``pickle_module`` for ``torch.load`` with :class:`_PermissiveUnpickler`."""

    Unpickler = _PermissiveUnpickler
    load = pickle.load
    __name__ = "pickle"


def load_source_checkpoint(path: str) -> Dict[str, Tensor]:
    """
    The state dict of a source checkpoint: mmdetection's ``{"state_dict", "meta", ...}``,
    cvpods' / Detectron2's ``{"model", ...}`` or a bare state dict.

    Tries ``torch.load(weights_only=True)`` first; mmdetection checkpoints keep framework
    objects in ``meta`` (and sometimes ``message_hub``), so it falls back to a full unpickle in
    which classes of frameworks that are not installed become placeholders. Only load files you
    trust: a full unpickle can run code.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Source checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled framework objects besides the tensors
        logger.info(f"{path}: weights-only load failed ({type(exc).__name__}), full unpickle")
        data = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PermissivePickle)
    if isinstance(data, Mapping):
        for key in ("state_dict", "model"):
            if key in data and isinstance(data[key], Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise CheckpointLayoutError(
            f"{path}: no state dict found (expected a dict of tensors, or one under 'state_dict' "
            "or 'model')"
        )
    state = {}
    for key, value in data.items():
        if hasattr(value, "shape"):
            state[key] = torch.as_tensor(value)
        else:
            raise CheckpointLayoutError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    # Checkpoints saved from a DataParallel / DistributedDataParallel wrapper.
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def convert_state_dict(
    state_dict: Mapping[str, Tensor], source: str = "auto"
) -> Tuple[Dict[str, Tensor], List[str], str]:
    """
    Args:
        state_dict: the source model's state dict.
        source: one of :data:`SOURCES`, or "auto" to detect it from marker keys.
    Returns:
        (converted state dict, source keys dropped on purpose, the source name).
    Raises:
        CheckpointLayoutError: naming the source keys that cannot be placed.
    """
    if source == "auto":
        detected = detect_source(state_dict)
        if detected is None:
            keys = sorted(state_dict)
            raise CheckpointLayoutError(
                "Cannot tell the checkpoint's layout (none of the marker keys "
                "'bbox_head.center_prior.mean' (mmdet3-autoassign), "
                "'bbox_head.conv_centerness.weight' (mmdet2-pseudo-iou), 'head.obj_score.weight' "
                f"+ 'mu' (cvpods-autoassign)); its {len(keys)} keys start with {keys[:8]}. "
                f"Pass the source explicitly: one of {sorted(SOURCES)}"
            )
        source = detected
    rules = rules_for(source, state_dict.keys())
    converted, dropped = apply_rules(state_dict, rules, source)
    return converted, dropped, source


def _shape_hint(converted: Mapping[str, Tensor], model_state: Mapping[str, Tensor]) -> str:
    key = "backbone.top_block.p6.weight"
    if key in converted and key in model_state and converted[key].shape != model_state[key].shape:
        return (
            f" (P6 of the checkpoint takes {converted[key].shape[1]} input channels: "
            "MODEL.FPN.TOP_BLOCK_IN_FEATURE selects P5 or C5 ('p5' / 'res5'))"
        )
    return ""


#: settings of the config each source's model was evaluated with (its ``*_mmdet`` / ``*_cvpods``
#: config): key -> value. A config that differs still loads the weights; the report notes it.
# The inference settings each source model was evaluated with: yacs key -> (the model's
# attribute, which is also its Python-config attribute ``model.<attribute>``, the source's value).
_MMDET_MEAN = [102.9801, 115.9465, 122.7717]
_SOURCE_SETTINGS = {
    "mmdet2-pseudo-iou": {
        "MODEL.PIXEL_MEAN": ("pixel_mean", _MMDET_MEAN),
        "MODEL.PSEUDO_IOU.TOPK_CANDIDATES_RULE": ("test_topk_candidates_rule", "mmdet2"),
    },
    "mmdet3-autoassign": {
        "MODEL.PIXEL_MEAN": ("pixel_mean", _MMDET_MEAN),
        "MODEL.AUTOASSIGN.SCORE_THRESH_ON": ("score_thresh_on", "cls"),
        "MODEL.AUTOASSIGN.CLIP_BOXES_BEFORE_NMS": ("clip_boxes_before_nms", True),
        "MODEL.AUTOASSIGN.TOPK_CANDIDATES_RULE": ("test_topk_candidates_rule", "mmdet3"),
    },
    "cvpods-autoassign": {
        "MODEL.PIXEL_MEAN": ("pixel_mean", [103.530, 116.280, 123.675]),
        "MODEL.AUTOASSIGN.SCORE_THRESH_ON": ("score_thresh_on", "cls_obj"),
        "MODEL.AUTOASSIGN.CLIP_BOXES_BEFORE_NMS": ("clip_boxes_before_nms", False),
        "MODEL.AUTOASSIGN.TOPK_CANDIDATES_RULE": ("test_topk_candidates_rule", "cvpods"),
    },
}


def _config_notes(source: str, model: torch.nn.Module) -> List[str]:
    """The settings of the model a config built (either config system) that differ from those
    the source model was evaluated with."""
    notes = []
    for key, (attribute, expected) in _SOURCE_SETTINGS[source].items():
        value = getattr(model, attribute)
        if isinstance(value, torch.Tensor):
            value = [round(v, 4) for v in value.flatten().tolist()]
        if isinstance(expected, list):
            same = len(value) == len(expected) and all(
                abs(a - b) < 1e-4 for a, b in zip(value, expected)
            )
        else:
            same = value == expected
        if not same:
            notes.append(
                f"{key} (Python config: model.{attribute}) is {value!r}; the {source} model was "
                f"evaluated with {expected!r}"
            )
    return notes


def convert_checkpoint(
    src: str,
    dst: str,
    source: str = "auto",
    cfg: Optional[Any] = None,
) -> Dict[str, Any]:
    """
    Convert the checkpoint file ``src`` and write the Detectron2 checkpoint ``dst``
    (``{"model": state_dict, "__author__": ..., "source_format": ...}``).

    Args:
        cfg: a config of either system (``anchor_free_app.config.load_config``); when given,
            its model is built on the CPU and the converted dict must fill exactly its
            parameters and buffers, with the same shapes (what the strict ``--eval-only`` loader
            requires).
    Returns:
        a report: source, number of keys converted, source keys dropped on purpose, and
        ``notes``: the config's inference settings that differ from the source's (pixel mean,
        what the score threshold applies to, clipping before NMS; the weights still fit).
    """
    state = load_source_checkpoint(src)
    converted, dropped, source = convert_state_dict(state, source)
    notes: List[str] = []
    if cfg is not None:
        from anchor_free_app.config import build_model_from_config, run_settings, set_device

        expected_arch = SOURCES[source][1]
        arch = run_settings(cfg).meta_architecture
        if arch != expected_arch:
            raise CheckpointLayoutError(
                f"{src} is a {source} checkpoint ({expected_arch}), but the config builds "
                f"MODEL.META_ARCHITECTURE={arch!r}"
            )
        cfg = copy.deepcopy(cfg)
        set_device(cfg, "cpu")
        model = build_model_from_config(cfg)
        model_state = model.state_dict()
        hint = _shape_hint(converted, model_state)
        check_against_model(converted, model_state, source, config_hint=hint)
        notes = _config_notes(source, model)
        for note in notes:
            logger.warning(note)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    torch.save(
        {
            "model": converted,
            "__author__": f"anchor_free_app.convert from {os.path.basename(src)}",
            "source_format": source,
        },
        dst,
    )
    return {
        "source": source,
        "converted": len(converted),
        "dropped": dropped,
        "output": dst,
        "notes": notes,
    }
