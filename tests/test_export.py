"""Export (``anchor_free_app/export.py``, ``tools/export_model.py``): the traced and the scripted
TorchScript models and the traced ONNX model of both detectors give the eager model's detections
on images of other sizes than the traced one (TorchScript to 1e-5 px, measured exact; ONNX Runtime
within 1e-3 px and 1e-5 in score, measured 2.5e-4 and 9.5e-7), on Detectron2 v0.6 and main; the
TorchScript models hold no device constant (device-portable); the
routes that cannot work (scripting to ONNX, a model TorchScript cannot compile) fail with the
reason and the route that works."""
import importlib.util
import json
import os
import warnings
from typing import Dict, Tuple

import pytest
import torch
from torch import nn

from anchor_free_app import export
from anchor_free_app.config import setup_cfg
from detectron2.modeling import build_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "PseudoIoU": ("configs/PseudoIoU/pseudo_iou_R_18_FPN_demo.yaml", "PSEUDO_IOU"),
    "AutoAssign": ("configs/AutoAssign/autoassign_R_18_FPN_demo.yaml", "AUTOASSIGN"),
}
TRACE_SIZE = (64, 85)  # the size of the generated sample image at INPUT.MIN_SIZE_TEST 64
# Other sizes: transposed, larger, and sides that are not multiples of the largest stride (128).
CHECK_SIZES = [(96, 128), (75, 130), (128, 96)]

needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="onnx / onnxruntime are not installed (tools/setup_env.sh installs onnx==1.23.2 "
    "onnxruntime==1.32.0)",
)


def _opts(name: str):
    key = CONFIGS[name][1]
    # Every candidate passes the score threshold (detections by construction), one conv per
    # tower to keep it fast, small test images.
    return [
        "MODEL.DEVICE", "cpu", f"MODEL.{key}.NUM_CONVS", "1", f"MODEL.{key}.SCORE_THRESH_TEST",
        "0.0", "INPUT.MIN_SIZE_TEST", str(TRACE_SIZE[0]), "INPUT.MAX_SIZE_TEST", "256",
    ]


def _cfg(name: str):
    return setup_cfg(os.path.join(REPO_ROOT, CONFIGS[name][0]), _opts(name), freeze=False)


def _model(name: str) -> nn.Module:
    """The demo architecture with seeded weights whose outputs are not degenerate: the head's
    release init (N(0, 0.01), zero box bias) gives near-equal scores and zero-size boxes (ReLU of
    about 0), which post-processing drops. Classifier and box weights are redrawn wider and the
    box bias is 1 (ltrb of about one stride): boxes of positive size, spread scores."""
    torch.manual_seed(0)
    model = build_model(_cfg(name)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        nn.init.normal_(model.head.cls_score.weight, std=0.3, generator=generator)
        nn.init.normal_(model.head.bbox_pred.weight, std=0.1, generator=generator)
        nn.init.constant_(model.head.bbox_pred.bias, 1.0)
    return model


def _image(height: int, width: int, seed: int) -> torch.Tensor:
    image = export.generated_image(height, width, seed=seed)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1).copy())


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def detector(request, one_torch_thread):
    name = request.param
    model = _model(name)
    sample = export.sample_input(_cfg(name))
    assert tuple(sample.shape[1:]) == TRACE_SIZE
    return name, model, sample


def _check_parity(model, exported, **tolerances):
    for seed, size in enumerate(CHECK_SIZES, start=1):
        image = _image(*size, seed=seed)
        reference = export.eager_detections(model, image)
        assert len(reference) > 0 and reference.image_size == size
        parity = export.compare_detections(reference, exported(image), **tolerances)
        assert parity.num_reference == parity.num_other, parity
        assert parity.ok(), parity


def test_traced_torchscript_equals_eager_on_other_sizes(detector, tmp_path):
    name, model, sample = detector
    path = export.export_model(model, sample, str(tmp_path), "torchscript", "tracing")
    assert path.endswith("model.ts")
    exported = export.load_exported(path)
    assert exported.names == ["pred_boxes", "pred_classes", "scores", "image_size"]
    _check_parity(model, exported, box_tol=1e-5, score_tol=1e-6)


@needs_onnxruntime
def test_onnx_runtime_matches_eager_on_other_sizes(detector, tmp_path):
    import onnx

    name, model, sample = detector
    path = export.export_model(model, sample, str(tmp_path), "onnx", "tracing")
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["image"]
    height, width = (d.dim_param for d in graph.input[0].type.tensor_type.shape.dim[1:])
    assert (height, width) == ("height", "width")  # not the traced 64 x 85
    _check_parity(
        model, export.load_exported(path), box_tol=export.ONNX_BOX_TOL,
        score_tol=export.ONNX_SCORE_TOL, min_score=export.ONNX_MIN_SCORE,
    )


def test_compare_detections_finds_a_moved_box_and_a_missing_one():
    model = _model("PseudoIoU")
    reference = export.eager_detections(model, _image(96, 128, seed=1))
    assert len(reference) >= 2
    moved = reference[torch.arange(len(reference))]  # a copy
    moved.pred_boxes.tensor[0, 2] += 0.01
    parity = export.compare_detections(reference, moved, box_tol=1e-3, score_tol=1e-5)
    assert (parity.unmatched_reference, parity.unmatched_other) == (1, 1)
    missing = reference[1:]
    parity = export.compare_detections(reference, missing)
    assert (parity.unmatched_reference, parity.unmatched_other) == (1, 0)
    assert parity.max_box_diff == 0.0 and parity.max_score_diff == 0.0
    # A detection at or below min_score is not required to match.
    low = float(reference.scores[0])
    parity = export.compare_detections(reference, missing, min_score=low)
    assert parity.ok()


def test_scripted_torchscript_equals_eager_on_other_sizes(detector, tmp_path):
    name, model, _ = detector
    path = export.export_model(model, None, str(tmp_path), "torchscript", "scripting")
    exported = export.load_exported(path)
    assert exported.method == "scripting"
    _check_parity(model, exported, box_tol=1e-5, score_tol=1e-6)


@pytest.mark.parametrize("method", export.EXPORT_METHODS)
def test_exported_torchscript_holds_no_device_constant(detector, method, tmp_path):
    """Device-portable TorchScript: nothing in the graph is bound to the export's device (the
    CPU here), so the model runs on the device it is moved to (Detectron2 v0.6 traced
    ``preprocess_image``'s ``x.to(self.device)``, ``Boxes``' ``as_tensor(..., device=...)`` and
    the point grids' ``arange(..., device=...)`` as constants; main the grids' ``arange`` on the
    CPU)."""
    name, _, sample = detector
    model = _model(name)  # a model is scripted once (test_scripted_torchscript_... scripts one)
    path = export.export_model(model, sample, str(tmp_path), "torchscript", method)
    assert export.device_constants(torch.jit.load(path)) == []


class _FirstLevelPoints(nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, features):
        return self.generator(features)[0].tensor


def _ones_plus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.ones(4)


def test_device_constants_names_what_binds_a_traced_model(caplog):
    from anchor_free.meta_arch import build_point_generator
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    def bound(x):
        return x.to(x.device) + torch.arange(4, device=x.device) + torch.ones(4)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(bound, (torch.zeros(4),))
    found = export.device_constants(traced)
    assert all(f.startswith("device constant 'cpu' used by aten::") for f in found), found
    assert all(op in " ".join(found) for op in ("aten::to", "aten::arange", "aten::ones")), found
    # Scripted, torch.ones(4) has no device (the default, the CPU, wherever the model runs).
    scripted = torch.jit.script(_ones_plus)
    (found,) = export.device_constants(scripted)
    assert found.startswith("aten::ones without a device (on the CPU)"), found
    with caplog.at_level("WARNING", logger=export.__name__):
        export._warn_device_constants(traced, "model.ts")
    assert "model.ts is bound to the device it was exported on" in caplog.text
    # Detectron2's anchor generator is bound on both routes (v0.6: the grid on self.device,
    # main: on the CPU, then moved); the detectors' PointGenerator is not.
    features = [torch.zeros(1, 1, 4, 6)]
    for generator, bound_grid in (
        (DefaultAnchorGenerator(sizes=[[8]], aspect_ratios=[1.0], strides=[8], offset=0.5), True),
        (build_point_generator([8], 0.5), False),
    ):
        with warnings.catch_warnings(), export._portable_boxes():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(_FirstLevelPoints(generator), (features,))
        assert bool(export.device_constants(traced)) == bound_grid, type(generator).__name__
        assert torch.equal(traced(features), generator(features)[0].tensor)
    # The same points as Detectron2's generator, on every level and both offsets.
    features = [torch.zeros(1, 0, h, w) for h, w in ((7, 9), (4, 5), (2, 3), (1, 2), (1, 1))]
    for offset in (0.0, 0.5):
        ours = build_point_generator([8, 16, 32, 64, 128], offset)(features)
        theirs = DefaultAnchorGenerator(
            sizes=[[s] for s in (8, 16, 32, 64, 128)], aspect_ratios=[1.0],
            strides=[8, 16, 32, 64, 128], offset=offset,
        )(features)  # fmt: skip
        assert all(torch.equal(a.tensor, b.tensor) for a, b in zip(ours, theirs))


class _NotScriptable(nn.Module):
    """A model TorchScript cannot compile (a Python set)."""

    def forward(self, inputs: Tuple[Dict[str, torch.Tensor]]):
        return [{"x": x["image"] * len({1, 2})} for x in inputs]


def test_routes_that_cannot_work_fail_with_the_reason_and_the_route_that_works(tmp_path):
    expected = "cannot export _NotScriptable: TorchScript fails with .*--export-method tracing"
    with pytest.raises(export.ExportError, match=expected):
        export.export_model(_NotScriptable(), None, str(tmp_path), "torchscript", "scripting")
    model = _model("AutoAssign")
    with pytest.raises(export.ExportError, match="ONNX needs --export-method tracing"):
        export.export_model(model, None, str(tmp_path), "onnx", "scripting")
    with pytest.raises(ValueError, match="--format must be one of"):
        export.export_model(model, None, str(tmp_path), "caffe2", "tracing")


def test_export_api_on_this_detectron2():
    api = export.detectron2_export_api()
    assert api.TracingAdapter.__name__ == "TracingAdapter"
    try:
        import detectron2.export  # noqa: F401
    except ModuleNotFoundError as e:  # Detectron2 v0.6: its __init__ imports caffe2
        assert e.name.startswith("caffe2")
        assert api.source.endswith("(detectron2.export imports caffe2 here)"), api.source
    else:
        assert api.source == "detectron2.export"


def test_unloadable_export_files_name_what_is_needed(monkeypatch):
    def fail(name, *args, **kwargs):
        raise ImportError(f"No module named {name}")

    monkeypatch.setattr(export.importlib, "import_module", fail)
    with pytest.raises(export.ExportError, match="Export needs Detectron2 main"):
        export._load_export_files_without_caffe2()


def export_model_cli():
    """tools/export_model.py as a module (run in-process: no second interpreter start-up)."""
    spec = importlib.util.spec_from_file_location(
        "export_model_cli", os.path.join(REPO_ROOT, "tools", "export_model.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_command(argv):
    return export_model_cli().main(argv)


@pytest.mark.parametrize(
    "fmt, method",
    [
        ("torchscript", "tracing"),
        pytest.param("onnx", "tracing", marks=needs_onnxruntime),
        ("torchscript", "scripting"),
    ],
)
def test_command_exports_a_checkpoint_and_checks_other_sizes(
    fmt, method, tmp_path, one_torch_thread
):
    weights = tmp_path / "model.pth"
    torch.save({"model": _model("PseudoIoU").state_dict()}, weights)
    out = tmp_path / "out"
    config = os.path.join(REPO_ROOT, CONFIGS["PseudoIoU"][0])
    argv = ["--config-file", config, "--format", fmt, "--export-method", method,
            "--output", str(out), "--check-sizes", "96x128,75x130", *_opts("PseudoIoU"),
            "MODEL.WEIGHTS", str(weights)]
    assert _run_command(argv) == 0
    assert (out / export.FILE_NAMES[fmt]).is_file()
    summary = json.loads((out / "parity.json").read_text())
    assert summary["traced_size"] == (list(TRACE_SIZE) if method == "tracing" else None)
    assert [tuple(r["image_size"]) for r in summary["images"]] == [(96, 128), (75, 130)]
    assert all(r["num_reference"] > 0 and r["unmatched_reference"] == 0 for r in summary["images"])


def test_command_errors(tmp_path):
    config = os.path.join(REPO_ROOT, CONFIGS["AutoAssign"][0])
    base = ["--config-file", config, "--output", str(tmp_path)]
    argv = base + ["--export-method", "scripting", "--format", "onnx"] + _opts("AutoAssign")
    assert _run_command(argv) == 2
    with pytest.raises(FileNotFoundError, match="--sample-image not found: nope.png"):
        _run_command(base + ["--sample-image", "nope.png"] + _opts("AutoAssign"))
    with pytest.raises(SystemExit):
        _run_command(base + ["--check-sizes", "96by128"])
    assert export_model_cli().parse_sizes("96x128,75x130") == [(96, 128), (75, 130)]


def test_command_takes_a_python_config_and_a_checkpoint_of_the_yacs_twin(tmp_path):
    """The same export from the Python twin of the demo config, with weights saved from the
    yacs-built model (strictly loaded: the two systems' models have the same parameters)."""
    weights = tmp_path / "model.pth"
    torch.save({"model": _model("PseudoIoU").state_dict()}, weights)
    out = tmp_path / "out"
    config = os.path.join(REPO_ROOT, "configs", "PseudoIoU", "pseudo_iou_R_18_FPN_demo.py")
    argv = ["--config-file", config, "--format", "torchscript", "--output", str(out),
            "--check-sizes", "96x128", "train.device=cpu", "model.head.num_convs=1",
            "model.test_score_thresh=0.0",
            f"dataloader.test.mapper.augmentations.0.short_edge_length={TRACE_SIZE[0]}",
            "dataloader.test.mapper.augmentations.0.max_size=256",
            f"train.init_checkpoint={weights}"]  # fmt: skip
    assert _run_command(argv) == 0
    summary = json.loads((out / "parity.json").read_text())
    assert summary["traced_size"] == list(TRACE_SIZE)
    assert all(r["num_reference"] > 0 and r["unmatched_reference"] == 0 for r in summary["images"])
