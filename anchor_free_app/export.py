"""
Export Pseudo-IoU and AutoAssign for deployment through Detectron2's export API, as Detectron2's
``tools/deploy/export_model.py`` does for its dense detectors (``export_tracing``,
``export_scripting``):

- **tracing** (``detectron2.export.TracingAdapter`` + ``torch.jit.trace``) to TorchScript, and
  the same traced graph to ONNX (``torch.onnx.export``, TorchScript-based exporter, the image's
  height and width declared dynamic). The exported model takes one image, a float32 (C, H, W)
  tensor in the config's input format and 0-255, already resized (``DefaultPredictor``'s
  ``ResizeShortestEdge``), of any height and width; it returns the flattened ``Instances`` of the
  eager ``model([{"image": image}])[0]["instances"]``: ``pred_boxes`` (R, 4) XYXY pixels,
  ``pred_classes`` (R,) int64, ``scores`` (R,), ``image_size`` (2,) int64 (their order is stored
  with the model: :data:`EXPORT_INFO_FILE` in the TorchScript archive, the output names in ONNX).
- **scripting** (``detectron2.export.scripting_with_instances``, TorchScript only): the scripted
  model takes ``({"image": image},)`` and returns, per image, a dict of ``pred_boxes``,
  ``scores``, ``pred_classes`` before Detectron2's ``detector_postprocess`` (which
  ``DenseDetector.forward`` skips when scripting); :func:`load_exported` applies it.

What made the models scriptable (each found by compiling): no ``zip`` over the head's
``nn.ModuleList`` (``AnchorFreeHead.forward``), and in ``AnchorFreeDetector`` ``per_level[0].cat``
instead of ``Instances.cat`` and ``anchor_free.meta_arch.PointBoxTransform`` instead of Detectron2's
``Box2BoxTransformLinear`` (same arithmetic; the latter does not compile).

**Device-portable TorchScript**: a traced model holds no device constant, so ``model.ts``
traced on the CPU runs on a GPU once moved there (``torch.jit.load(path, map_location="cuda")``
or ``.to("cuda")``), its input moved to the device of its buffers as it runs; a scripted model
reads devices as it runs anyway. On Detectron2 main, ``DenseDetector.preprocess_image`` and
``Boxes`` read devices as they run (``move_device_like``); on v0.6, ``AnchorFreeDetector`` moves
the image with the same ``move_device_like`` and :func:`export_tracing` traces with
Detectron2 main's ``Boxes.__init__`` (``tensor.to(torch.float32)``; v0.6's
``torch.as_tensor(tensor, device=tensor.device)`` records the device); on both,
``anchor_free.meta_arch.PointGenerator`` builds the point grids on its buffers' device.
:func:`device_constants` lists what a traced graph still binds to a device (checked at every
export: a warning names them; ``tests/test_export.py`` requires none).

On Detectron2 v0.6, ``detectron2/export/__init__.py`` imports ``api.py``, which imports caffe2
(which current PyTorch does not ship), so ``import detectron2.export`` fails there.
``flatten.py`` (``TracingAdapter``) and ``torchscript.py`` (``scripting_with_instances``) need
no caffe2: :func:`detectron2_export_api` then loads these two files of the installed
Detectron2 under a private package name, without running that ``__init__``.
"""
import contextlib
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from detectron2.data.detection_utils import read_image
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from .config import AnyConfig, run_settings
from .predictor import preprocess_image

__all__ = [
    "device_constants",
    "EXPORT_FORMATS",
    "EXPORT_METHODS",
    "ONNX_OPSET",
    "ONNX_BOX_TOL",
    "ONNX_SCORE_TOL",
    "ONNX_MIN_SCORE",
    "ExportError",
    "DetectionParity",
    "detectron2_export_api",
    "preprocess_image",
    "generated_image",
    "export_model",
    "export_tracing",
    "export_scripting",
    "load_exported",
    "eager_detections",
    "compare_detections",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("torchscript", "onnx")
EXPORT_METHODS = ("tracing", "scripting")
# The TorchScript-based ONNX exporter's default opset in torch 2.x (Detectron2 main's
# STABLE_ONNX_OPSET_VERSION, 11, predates it; torchvision's NMS needs >= 11).
ONNX_OPSET = 17
INPUT_NAME = "image"
# ONNX Runtime vs eager, on the CPU: at most 2.5e-4 px and 2.7e-6 in score measured on both
# detectors (tests/test_export.py's models; README.md, "Export"): float32 summation order.
ONNX_BOX_TOL = 1e-3
ONNX_SCORE_TOL = 1e-5
# ONNX Runtime's Sigmoid returns 0 below a logit of about -17 (probability < 4e-8) and is
# approximate below about -10, where torch gives the exact tiny value: with SCORE_THRESH_TEST 0,
# candidates scoring below ~1e-7 exist in one model only. They never change a higher detection
# (top-k and NMS go by decreasing score), so comparisons ignore detections at or below this.
ONNX_MIN_SCORE = 1e-6
# How a TorchScript archive was made ({"method": "tracing" or "scripting", "output_names": the
# traced model's outputs in order}), stored in the archive (``torch.jit.save``'s ``_extra_files``).
EXPORT_INFO_FILE = "export.json"
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}
_PRIVATE_EXPORT_PACKAGE = "anchor_free_app._detectron2_export"


class ExportError(RuntimeError):
    """An export route that cannot work here, with the reason and what works instead."""


# ------------------------------------------------------------------------------------------------
# Detectron2's export API
# ------------------------------------------------------------------------------------------------
def _load_export_files_without_caffe2() -> SimpleNamespace:
    """``flatten.py`` and ``torchscript.py`` of the installed ``detectron2/export`` as
    submodules of a private package whose ``__path__`` is that folder (its ``__init__`` not run),
    so their relative imports (``torchscript_patch``) resolve there too."""
    import detectron2

    export_dir = os.path.join(os.path.dirname(detectron2.__file__), "export")
    if _PRIVATE_EXPORT_PACKAGE not in sys.modules:
        spec = importlib.machinery.ModuleSpec(_PRIVATE_EXPORT_PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [export_dir]
        package = importlib.util.module_from_spec(spec)
        package.__path__ = [export_dir]
        sys.modules[_PRIVATE_EXPORT_PACKAGE] = package
    try:
        flatten = importlib.import_module(f"{_PRIVATE_EXPORT_PACKAGE}.flatten")
        torchscript = importlib.import_module(f"{_PRIVATE_EXPORT_PACKAGE}.torchscript")
    except ImportError as e:
        raise ExportError(
            f"Cannot load Detectron2's TracingAdapter from {export_dir}/flatten.py: {e}. "
            "Export needs Detectron2 main (README.md, 'Set-up', the official route)."
        ) from e
    return SimpleNamespace(
        TracingAdapter=flatten.TracingAdapter,
        scripting_with_instances=torchscript.scripting_with_instances,
        source=f"{export_dir}/{{flatten,torchscript}}.py (detectron2.export imports caffe2 here)",
    )


def detectron2_export_api() -> SimpleNamespace:
    """
    Returns:
        a namespace with Detectron2's ``TracingAdapter`` and ``scripting_with_instances``, and
        ``source``, where they were loaded from: ``detectron2.export`` (Detectron2 main), or on
        Detectron2 v0.6, whose ``detectron2.export`` fails on ``import caffe2``, the two files it
        needs (module docstring).
    """
    try:
        from detectron2 import export
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("caffe2"):
            raise
        return _load_export_files_without_caffe2()
    return SimpleNamespace(
        TracingAdapter=export.TracingAdapter,
        scripting_with_instances=export.scripting_with_instances,
        source="detectron2.export",
    )


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def generated_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic (height, width, 3) uint8 image: uniform noise with a few flat rectangles
    (so a trained detector has something to find), for when no sample image is given."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    for _ in range(4):
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        h = rng.integers(height // 8 + 1, height // 2 + 1)
        w = rng.integers(width // 8 + 1, width // 2 + 1)
        image[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return image


def sample_input(cfg: AnyConfig, image_path: Optional[str] = None) -> Tensor:
    """The image to trace with: ``image_path`` read in the config's input format, or a
    :func:`generated_image` of 3:4 shape, preprocessed as at test time. (C, H, W) float32."""
    settings = run_settings(cfg)
    if image_path is not None:
        if not os.path.isfile(image_path):
            raise FileNotFoundError(f"--sample-image not found: {image_path}")
        image = read_image(image_path, format=settings.input_format)
    else:
        side = max(settings.test_min_size, 32)
        image = generated_image(side, side * 4 // 3)
    return preprocess_image(cfg, image)


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------
def _output_names(schema) -> List[str]:
    """Names of the flattened outputs of a TracingAdapter schema: the ``Instances`` field names
    (and ``image_size``) of the single image, e.g. ``["pred_boxes", "pred_classes", "scores",
    "image_size"]``; ``<name>_<i>`` where a name would repeat."""
    names: List[str] = []

    def visit(s, name: str) -> None:
        kind = type(s).__name__
        if kind == "InstancesSchema":
            for key, sub in zip(s.keys, s.schemas):
                visit(sub, key)
            names.append("image_size")
        elif hasattr(s, "keys") and hasattr(s, "schemas"):  # DictSchema
            for key, sub in zip(s.keys, s.schemas):
                visit(sub, key)
        elif hasattr(s, "schemas"):  # ListSchema / TupleSchema
            for i, sub in enumerate(s.schemas):
                visit(sub, name or f"output{i}")
        else:  # a tensor, or a tensor-wrapping class such as Boxes
            names.append(name)

    visit(schema, "")
    counts: Dict[str, int] = {}
    unique = []
    for n in names:
        counts[n] = counts.get(n, 0) + 1
        unique.append(n if names.count(n) == 1 else f"{n}_{counts[n] - 1}")
    return unique


def _tracing_adapter(model: nn.Module, image: Tensor):
    api = detectron2_export_api()
    adapter = api.TracingAdapter(model, [{INPUT_NAME: image}])
    # TracingAdapter is a new nn.Module (training mode); the exporters restore the mode of the
    # module they get, which would switch the detector to training.
    adapter.eval()
    with torch.no_grad():
        adapter(image)  # sets adapter.outputs_schema
    return adapter


def _boxes_init_without_device(self, tensor: Tensor) -> None:
    """Detectron2 main's ``Boxes.__init__``: converts with ``tensor.to(torch.float32)``."""
    if not isinstance(tensor, torch.Tensor):
        tensor = torch.as_tensor(tensor, dtype=torch.float32, device=torch.device("cpu"))
    else:
        tensor = tensor.to(torch.float32)
    if tensor.numel() == 0:
        tensor = tensor.reshape((-1, 4)).to(dtype=torch.float32)
    assert tensor.dim() == 2 and tensor.size(-1) == 4, tensor.size()
    self.tensor = tensor


@contextlib.contextmanager
def _portable_boxes():
    """While tracing on Detectron2 v0.6: ``Boxes.__init__`` as on main. v0.6's
    ``torch.as_tensor(tensor, dtype=torch.float32, device=tensor.device)`` is recorded by the
    tracer as a conversion to the device of the trace, a constant."""
    from anchor_free.meta_arch import DETECTRON2_MOVES_DEVICE_LIKE

    if DETECTRON2_MOVES_DEVICE_LIKE:
        yield
        return
    original = Boxes.__init__
    Boxes.__init__ = _boxes_init_without_device
    try:
        yield
    finally:
        Boxes.__init__ = original


#: Operators that create a tensor from nothing (their ``device`` argument says where).
_FACTORIES = {
    "aten::arange", "aten::empty", "aten::full", "aten::linspace", "aten::ones", "aten::rand",
    "aten::randn", "aten::scalar_tensor", "aten::tensor", "aten::zeros",
}


def _holds_data(node, names: List[str], inputs: List) -> bool:
    """Whether a factory node's tensor has more than a scalar's data: not a 0-dim tensor (of
    known shape, or ``torch.tensor`` of a Python number: torchvision's ``batched_nms``) nor an
    empty one (a constant size with a 0: ``Boxes.cat`` of an empty list)."""
    out = node.output().type()
    if isinstance(out, torch._C.TensorType) and out.dim() == 0:
        return False
    number = ("int", "float", "bool", "number", "Scalar")
    if node.kind() in ("aten::tensor", "aten::scalar_tensor") and str(inputs[0].type()) in number:
        return False
    if "size" in names:
        size = inputs[names.index("size")].node()
        if size.kind() == "prim::ListConstruct":
            dims = [i.node() for i in size.inputs()]
            zero = [d.kind() == "prim::Constant" and d.hasAttribute("value") and d.i("value") == 0
                    for d in dims]  # fmt: skip
            if any(zero):
                return False
    return True


def device_constants(module: torch.jit.ScriptModule) -> List[str]:
    """
    What in a TorchScript module's graph (methods inlined) is bound to a device fixed at export:
    device constants (``prim::Constant`` of type ``Device``, e.g. ``x.to(self.device)`` traced),
    tensors of more than one element stored as constants, and tensors created from nothing
    without a device argument (which would be on the CPU whatever the device the model runs on).
    0-dim tensors (Python numbers and the traced shape arithmetic) are not listed: PyTorch uses a
    0-dim CPU tensor with tensors of any device; nor are empty tensors.

    Returns:
        one line per finding: the node and the source line it was recorded from; empty for a
        device-portable model.
    """
    graph = module.inlined_graph if hasattr(module, "inlined_graph") else module.graph
    found: List[str] = []

    def where(node) -> str:
        lines = node.sourceRange().strip().splitlines()  # empty in a loaded module
        return f" ({lines[0].strip()})" if lines else ""

    for node in graph.findAllNodes("prim::Constant"):
        out = node.output()
        if str(out.type()) == "Device":
            users = sorted({u.user.kind() + where(u.user) for u in out.uses()})
            found.append(f"device constant {node.s('value')!r} used by {', '.join(users)}")
        elif isinstance(out.type(), torch._C.TensorType) and node.hasAttribute("value"):
            value = node.t("value")
            if value.numel() > 1:
                found.append(f"tensor constant of shape {tuple(value.shape)}{where(node)}")
    for kind in sorted(_FACTORIES):
        for node in graph.findAllNodes(kind):
            try:
                names = [a.name for a in torch._C.parse_schema(node.schema()).arguments]
            except RuntimeError:  # no schema
                continue
            if "device" not in names:
                continue
            inputs = list(node.inputs())
            device = inputs[names.index("device")].node()
            # A device constant is listed above; prim::device is read as the model runs.
            if device.kind() != "prim::Constant" or device.hasAttribute("value"):
                continue
            if not _holds_data(node, names, inputs):
                continue
            found.append(f"{kind} without a device (on the CPU){where(node)}")
    return found


def export_tracing(model: nn.Module, image: Tensor, fmt: str, path: str) -> List[str]:
    """
    Trace ``model`` (eval mode) on one image and write it to ``path`` in format ``fmt``.

    Args:
        image: (C, H, W) float32 as :func:`preprocess_image` gives; its size is not baked in.
    Returns:
        the output names, in order.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    model.eval()
    adapter = _tracing_adapter(model, image)
    names = _output_names(adapter.outputs_schema)
    with warnings.catch_warnings(), torch.no_grad(), _portable_boxes():
        # TracerWarnings name Python values recorded as constants; those that matter would show
        # as a parity failure at another image size, which the tests check.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if fmt == "torchscript":
            traced = torch.jit.trace(adapter, (image,))
            _warn_device_constants(traced, path)
            info = {"method": "tracing", "output_names": names}
            torch.jit.save(traced, path, _extra_files={EXPORT_INFO_FILE: json.dumps(info)})
        else:
            _export_onnx(adapter, image, path, names)
    return names


def _warn_device_constants(module: torch.jit.ScriptModule, path: str) -> None:
    """A warning naming what binds an exported TorchScript model to the export's device."""
    found = device_constants(module)
    if found:
        logger.warning(
            f"{path} is bound to the device it was exported on (MODEL.DEVICE): "
            + "; ".join(found[:5])
            + (f" (and {len(found) - 5} more)" if len(found) > 5 else "")
            + ". Run it on that device, or export on the device it will run on."
        )



def _export_onnx(adapter: nn.Module, image: Tensor, path: str, names: List[str]) -> None:
    dynamic_axes = {INPUT_NAME: {1: "height", 2: "width"}}
    # The number of detections varies; image_size has 2 entries.
    dynamic_axes.update({n: {0: f"num_{n}"} for n in names if n != "image_size"})
    torch.onnx.export(
        adapter,
        (image,),
        path,
        input_names=[INPUT_NAME],
        output_names=names,
        dynamic_axes=dynamic_axes,
        opset_version=ONNX_OPSET,
        dynamo=False,  # Detectron2's route: the TorchScript-based exporter on the traced graph
    )
    try:
        import onnx
    except ImportError:
        logger.warning("onnx is not installed: the exported file was not checked (onnx.checker)")
    else:
        onnx.checker.check_model(path)


class _ScriptableAdapter(nn.Module):
    """Detectron2's ``export_scripting`` adapter for dense detectors: returns the fields of each
    image's Instances as a dict (pytorch/pytorch#46944)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, inputs: Tuple[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        instances = self.model(inputs)
        return [i.get_fields() for i in instances]


def export_scripting(model: nn.Module, path: str) -> None:
    """
    ``scripting_with_instances`` on the model (eval mode), as Detectron2's ``export_scripting``;
    see the module docstring for what the scripted model returns. A model TorchScript cannot
    compile raises :class:`ExportError` with TorchScript's first error line and the route that
    works for any model (tracing, TorchScript or ONNX, any image size).
    """
    api = detectron2_export_api()
    fields = {"pred_boxes": Boxes, "scores": Tensor, "pred_classes": Tensor}
    model.eval()
    try:
        scripted = api.scripting_with_instances(_ScriptableAdapter(model), fields)
    except Exception as e:  # TorchScript's frontend raises several types
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(
            f"--export-method scripting cannot export {type(model).__name__}: TorchScript "
            f"fails with {type(e).__name__}: {first_line}. Use --export-method tracing "
            "(TorchScript or ONNX; the traced model takes images of any size)."
        ) from e
    info = {"method": "scripting", "output_names": sorted(fields)}
    torch.jit.save(scripted, path, _extra_files={EXPORT_INFO_FILE: json.dumps(info)})


def export_model(
    model: nn.Module, image: Optional[Tensor], output_dir: str, fmt: str, method: str
) -> str:
    """
    Export ``model`` to ``output_dir``/model.ts or model.onnx. Returns the file's path.

    Args:
        image: the sample (C, H, W) for tracing (unused by scripting).
        fmt: "torchscript" or "onnx"; method: "tracing" or "scripting" (TorchScript only).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    if method not in EXPORT_METHODS:
        raise ValueError(f"--export-method must be one of {EXPORT_METHODS}, got {method!r}")
    if method == "scripting" and fmt != "torchscript":
        raise ExportError(
            "--export-method scripting exports TorchScript only (as Detectron2's "
            "export_model.py); ONNX needs --export-method tracing"
        )
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILE_NAMES[fmt])
    if method == "scripting":
        export_scripting(model, path)
    else:
        if image is None:
            raise ValueError("tracing needs a sample image")
        export_tracing(model, image, fmt, path)
    return path


# ------------------------------------------------------------------------------------------------
# Running exported models and comparing them with the eager model
# ------------------------------------------------------------------------------------------------
def instances_from_outputs(outputs: Dict[str, Tensor]) -> Instances:
    """The eager model's ``Instances`` from the named outputs of an exported one."""
    height, width = (int(v) for v in outputs["image_size"])
    return Instances(
        (height, width),
        pred_boxes=Boxes(outputs["pred_boxes"]),
        scores=outputs["scores"],
        pred_classes=outputs["pred_classes"],
    )


class _TorchScriptDetector:
    def __init__(self, path: str):
        extra = {EXPORT_INFO_FILE: ""}
        self.module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
        if not extra[EXPORT_INFO_FILE]:
            raise ExportError(
                f"{path} has no {EXPORT_INFO_FILE}: it was not written by "
                "anchor_free_app.export (tools/export_model.py)"
            )
        info = json.loads(extra[EXPORT_INFO_FILE])
        self.method = info["method"]
        self.names = info["output_names"]

    def __call__(self, image: Tensor) -> Instances:
        with torch.no_grad():
            if self.method == "tracing":
                return instances_from_outputs(dict(zip(self.names, self.module(image))))
            fields = self.module(({INPUT_NAME: image},))[0]
        # The scripted model stops before DenseDetector.forward's post-processing: at the input
        # resolution, detector_postprocess clips the boxes and drops the empty ones.
        height, width = int(image.shape[-2]), int(image.shape[-1])
        instances = instances_from_outputs({**fields, "image_size": torch.tensor([height, width])})
        return detector_postprocess(instances, height, width)


class _OnnxDetector:
    def __init__(self, path: str):
        try:
            import onnxruntime
        except ImportError as e:
            raise ExportError(
                "Running an ONNX model needs onnxruntime (pip install onnxruntime; the set-up "
                "installs it)"
            ) from e
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        self.session = onnxruntime.InferenceSession(
            path, options, providers=["CPUExecutionProvider"]
        )
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, image: Tensor) -> Instances:
        outputs = self.session.run(None, {INPUT_NAME: image.cpu().numpy()})
        return instances_from_outputs(
            {n: torch.from_numpy(np.asarray(v)) for n, v in zip(self.names, outputs)}
        )


def load_exported(path: str) -> Callable[[Tensor], Instances]:
    """A callable that runs the exported model at ``path`` (model.ts, traced or scripted, or
    model.onnx) on the CPU: (C, H, W) float32 image -> Instances (as :func:`eager_detections`)."""
    if path.endswith(".onnx"):
        return _OnnxDetector(path)
    return _TorchScriptDetector(path)


def eager_detections(model: nn.Module, image: Tensor) -> Instances:
    """The eager model on one (C, H, W) image, at the input resolution, on the CPU."""
    model.eval()
    with torch.no_grad():
        instances = model([{INPUT_NAME: image}])[0]["instances"]
    return instances.to("cpu")


@dataclass
class DetectionParity:
    """How an exported model's detections on one image compare with the eager model's."""

    image_size: Tuple[int, int]
    num_reference: int
    num_other: int
    unmatched_reference: int  # reference detections above min_score without a counterpart
    unmatched_other: int  # and the other way round
    max_box_diff: float  # max |coordinate difference| (px) over matched pairs
    max_score_diff: float  # max |score difference| over matched pairs

    def ok(self) -> bool:
        return self.unmatched_reference == 0 and self.unmatched_other == 0

    def as_dict(self) -> Dict:
        return asdict(self)


def _match(
    boxes: Tensor, scores: Tensor, classes: Tensor, o_boxes: Tensor, o_scores: Tensor,
    o_classes: Tensor, box_tol: float, score_tol: float,
) -> Tuple[Tensor, Tensor]:
    """For each detection (R,), whether some detection of the other set (O,) has its class, a box
    within ``box_tol`` (L-inf) and a score within ``score_tol``; and the index of the closest."""
    if len(o_boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool), torch.zeros(len(boxes), dtype=torch.long)
    box_dist = (boxes[:, None, :] - o_boxes[None, :, :]).abs().amax(dim=2)  # (R, O)
    score_dist = (scores[:, None] - o_scores[None, :]).abs()
    same_class = classes[:, None] == o_classes[None, :]
    ok = same_class & (box_dist <= box_tol) & (score_dist <= score_tol)
    cost = torch.where(ok, box_dist + score_dist, torch.full_like(box_dist, float("inf")))
    best = cost.argmin(dim=1)
    return ok.any(dim=1), best


def compare_detections(
    reference: Instances,
    other: Instances,
    *,
    min_score: float = 0.0,
    box_tol: float = 1e-3,
    score_tol: float = 1e-5,
) -> DetectionParity:
    """
    Match each detection scoring above ``min_score`` in one set to a detection of the other set
    (any score) with the same class, its box within ``box_tol`` px (max coordinate difference)
    and its score within ``score_tol``. Detections at or below ``min_score`` are not required to
    match: a low score cannot change a higher one's fate (top-k and NMS go by decreasing score).

    Returns:
        counts, unmatched detections on each side, and the largest box and score differences
        over the matched pairs.
    """
    fields = []
    for inst in (reference, other):
        fields.append(
            (inst.pred_boxes.tensor.float(), inst.scores.float(), inst.pred_classes.long())
        )
    (boxes, scores, classes), (o_boxes, o_scores, o_classes) = fields
    keep = scores > min_score
    o_keep = o_scores > min_score
    matched, best = _match(
        boxes[keep], scores[keep], classes[keep], o_boxes, o_scores, o_classes, box_tol, score_tol
    )
    o_matched, _ = _match(
        o_boxes[o_keep], o_scores[o_keep], o_classes[o_keep], boxes, scores, classes,
        box_tol, score_tol,
    )
    if bool(matched.any()):
        pairs = matched.nonzero()[:, 0]
        max_box = float((boxes[keep][pairs] - o_boxes[best[pairs]]).abs().max())
        max_score = float((scores[keep][pairs] - o_scores[best[pairs]]).abs().max())
    else:
        max_box = max_score = 0.0
    return DetectionParity(
        image_size=tuple(int(s) for s in reference.image_size),
        num_reference=len(reference),
        num_other=len(other),
        unmatched_reference=int((~matched).sum()),
        unmatched_other=int((~o_matched).sum()),
        max_box_diff=max_box,
        max_score_diff=max_score,
    )
