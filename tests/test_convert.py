"""Converters of the published checkpoints (anchor_free_app.convert) against the committed
fixtures of tests/fixtures/convert/: a reduced model of each source with random weights, its
checkpoint and its outputs on two images, written by tools/parity/ (mmdetection 3.3 AutoAssign;
the Pseudo-IoU authors' PIOUHead in mmdetection 2.11; the AutoAssign authors' released
auto_assign.py with cvpods' box and shift code on Detectron2). The converted checkpoint
must load with the strict --eval-only loader and reproduce every level's outputs (1e-4) and the
detections, also under test settings where the sources' per-level candidate caps drop candidates
(capped.pth); a checkpoint of another layout must fail naming its keys."""
import os

import pytest
import torch
from common import REPO_ROOT

from anchor_free_app.checkpoint import SafeDetectionCheckpointer
from anchor_free_app.config import setup_cfg
from anchor_free_app.convert import (
    CheckpointLayoutError,
    convert_checkpoint,
    convert_state_dict,
    detect_source,
    load_source_checkpoint,
)
from anchor_free_app.convert.cli import main as cli_main
from anchor_free_app.convert.parity import compare_outputs, run_model
from detectron2.modeling import build_model

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "convert")
TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(config_file, *opts):
    return setup_cfg(config_file, ["MODEL.DEVICE", "cpu", *opts])


def _fixture(name):
    folder = os.path.join(FIXTURES, name)
    return folder, os.path.join(folder, "config.yaml")


def _converted_model(name, tmp_path, *opts):
    folder, config = _fixture(name)
    cfg = _cfg(config, *opts)
    dst = str(tmp_path / f"{name}.pth")
    report = convert_checkpoint(os.path.join(folder, "source.pth"), dst, "auto", cfg)
    model = build_model(cfg)
    SafeDetectionCheckpointer(model, strict=True).load(dst)
    return model.eval(), report, folder


def test_fixtures_are_small():
    total = sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(FIXTURES) for f in files
    )
    assert total < 4 * 2**20, total


@pytest.mark.parametrize(
    "name,source,arch",
    [
        ("mmdet2_pseudo_iou", "mmdet2-pseudo-iou", "PseudoIoU"),
        ("mmdet3_autoassign", "mmdet3-autoassign", "AutoAssign"),
        ("cvpods_autoassign", "cvpods-autoassign", "AutoAssign"),
    ],
)
def test_fixture_converts_and_matches_source_outputs(name, source, arch, tmp_path):
    model, report, folder = _converted_model(name, tmp_path)
    assert report["source"] == source and type(model).__name__ == arch
    assert report["notes"] == []  # the config has the source's inference settings
    # Every source tensor is placed or is a BatchNorm step counter (FrozenBN has none).
    assert all(k.endswith("num_batches_tracked") for k in report["dropped"])
    assert bool(report["dropped"]) == source.startswith("mmdet")
    src = torch.load(os.path.join(folder, "outputs.pth"), weights_only=True)
    ours = run_model(model, src["images"])
    for rep in compare_outputs(src, ours, TOL):
        assert rep["cls"] <= TOL and rep["box"] <= TOL and rep["quality"] <= TOL, rep
        det = rep["detections"]
        assert det["source"] > 20 and det["unmatched"] == 0, det
        assert det["max_box_diff"] <= TOL * 200 and det["max_score_diff"] <= TOL, det
        if source != "mmdet2-pseudo-iou":
            # The same post-processing as the source (mmdetection 3: threshold on the class
            # probability, clip, empty boxes dropped before NMS; the release: threshold on
            # cls x obj, no clip): the very same detections.
            assert det["matched"] == det["source"] == det["ours"], det
        else:
            # mmdet 2.11 also outputs the empty boxes of points in the padding (clipped to the
            # border); Detectron2 drops them after NMS: everything else is the same.
            assert det["matched"] + det["source_empty"] == det["source"], det
            assert det["ours"] == det["matched"], det


def _identical(det, source):
    """The detections are the source's: every one matched (mmdet 2.11 also outputs the empty
    boxes of points in the padding, which Detectron2 drops after NMS), none of ours extra."""
    if source == "mmdet2-pseudo-iou":
        complete = det["matched"] + det["source_empty"] == det["source"]
        return complete and det["ours"] == det["matched"]
    return det["matched"] == det["source"] == det["ours"]


def _levels_over_cap(levels, rule, thresh, topk):
    """The levels of one image (the source's raw outputs) where the source's candidate cap
    drops pairs above the threshold: more pairs above it than ``topk`` (mmdet3) or than
    ``min(topk, H x W)`` (cvpods), or more locations than ``topk`` of which some left out have
    a pair above it (mmdet2)."""
    over = []
    for l, level in enumerate(levels):
        cls = level["cls"].sigmoid().flatten(1).T  # (HW, K)
        score = cls * level["quality"].sigmoid().flatten(1).T
        if rule == "mmdet2":
            dropped = torch.ones(len(cls), dtype=torch.bool)
            dropped[score.max(dim=1).values.topk(min(topk, len(cls))).indices] = False
            hit = bool((cls[dropped] > thresh).any())
        elif rule == "mmdet3":
            hit = int((cls > thresh).sum()) > topk
        else:
            hit = int((score > thresh).sum()) > min(topk, len(cls))
        if hit:
            over.append(l)
    return over


@pytest.mark.parametrize(
    "name,source,rule",
    [
        ("mmdet2_pseudo_iou", "mmdet2-pseudo-iou", "mmdet2"),
        ("mmdet3_autoassign", "mmdet3-autoassign", "mmdet3"),
        ("cvpods_autoassign", "cvpods-autoassign", "cvpods"),
    ],
)
def test_capped_fixture_gives_the_sources_detections(name, source, rule, tmp_path):
    """capped.pth: the source's detections under test settings where some levels have more
    candidates above the threshold than the source keeps (mmdetection 2 ``nms_pre`` locations,
    mmdetection 3 ``filter_scores_and_topk``, the release's ``min(topk_candidates, H x W)``), up
    to 1000 per image. The fixture's config (the source's *_mmdet / *_cvpods config) selects the
    source's rule and gives the very same detections; every other rule, and no cap, does not."""
    from anchor_free.meta_arch import TOPK_CANDIDATES_RULES

    folder, _ = _fixture(name)
    src = torch.load(os.path.join(folder, "outputs.pth"), weights_only=True)
    capped = torch.load(os.path.join(folder, "capped.pth"), weights_only=True)
    model, _, _ = _converted_model(name, tmp_path, *capped["opts"])
    assert model.test_topk_candidates_rule == rule
    for levels in src["levels"]:
        assert _levels_over_cap(levels, rule, model.test_score_thresh, model.test_topk_candidates)
    source_out = {**src, "detections": capped["detections"]}

    def detections():
        return [r["detections"] for r in compare_outputs(source_out, run_model(model, src["images"]), TOL)]

    for det in detections():
        assert _identical(det, source) and det["source"] > 150, det
        assert det["max_box_diff"] <= TOL * 200 and det["max_score_diff"] <= TOL, det
    for other in [r for r in TOPK_CANDIDATES_RULES if r != rule] + ["no cap"]:
        model.test_topk_candidates_rule = "detectron2" if other == "no cap" else other
        if other == "no cap":
            model.test_topk_candidates = 10**6
        assert not all(_identical(det, source) for det in detections()), other


def test_source_checkpoint_loads_without_the_framework():
    folder, _ = _fixture("mmdet2_pseudo_iou")
    state = load_source_checkpoint(os.path.join(folder, "source.pth"))
    assert "bbox_head.conv_centerness.weight" in state
    assert detect_source(state) == "mmdet2-pseudo-iou"


def test_another_layout_names_the_keys_it_cannot_place():
    folder, _ = _fixture("mmdet3_autoassign")
    state = load_source_checkpoint(os.path.join(folder, "source.pth"))
    # An mmdet AutoAssign checkpoint read as cvpods: none of mmdet's names fit.
    with pytest.raises(CheckpointLayoutError) as err:
        convert_state_dict(state, "cvpods-autoassign")
    msg = str(err.value)
    assert "cvpods-autoassign" in msg and "363 of its 363 keys cannot be placed" in msg
    assert "bbox_head.conv_cls.bias" in msg and "neck.fpn_convs.0.conv.bias" in msg
    # Read as the Pseudo-IoU release: everything but the learnable center prior fits.
    with pytest.raises(CheckpointLayoutError) as err:
        convert_state_dict(state, "mmdet2-pseudo-iou")
    msg = str(err.value)
    assert "2 of its" in msg and "bbox_head.center_prior.mean" in msg
    assert "bbox_head.center_prior.sigma" in msg
    with pytest.raises(CheckpointLayoutError, match="Cannot tell the checkpoint's layout"):
        convert_state_dict({"fc.weight": torch.zeros(2, 2)})


def test_model_of_another_config_names_unused_and_unfilled_keys(tmp_path):
    folder, _ = _fixture("mmdet2_pseudo_iou")
    _, aa_config = _fixture("mmdet3_autoassign")
    src = os.path.join(folder, "source.pth")
    with pytest.raises(CheckpointLayoutError, match="MODEL.META_ARCHITECTURE='AutoAssign'"):
        convert_checkpoint(src, str(tmp_path / "x.pth"), "auto", _cfg(aa_config))
    # The Pseudo-IoU checkpoint against a Pseudo-IoU model with AutoAssign's P6 (from C5) and
    # without the centerness branch: every difference is named.
    _, piou_config = _fixture("mmdet2_pseudo_iou")
    cfg = _cfg(piou_config, "MODEL.FPN.TOP_BLOCK_IN_FEATURE", "res5", "MODEL.PSEUDO_IOU.CENTERNESS", "False")
    with pytest.raises(CheckpointLayoutError) as err:
        convert_checkpoint(src, str(tmp_path / "x.pth"), "auto", cfg)
    msg = str(err.value)
    assert "head.quality.weight" in msg and "no place for" in msg
    assert "backbone.top_block.p6.weight: checkpoint (32, 32, 3, 3) vs model (32, 128, 3, 3)" in msg
    assert "TOP_BLOCK_IN_FEATURE" in msg
    assert not (tmp_path / "x.pth").exists()
    # Unfilled: a model with more tower convs than the checkpoint.
    cfg = _cfg(piou_config, "MODEL.PSEUDO_IOU.NUM_CONVS", "3")
    with pytest.raises(CheckpointLayoutError, match=r"left unfilled: head\.box_tower\.6\.weight"):
        convert_checkpoint(src, str(tmp_path / "x.pth"), "auto", cfg)


def test_cli_writes_a_checkpoint_for_eval_only(tmp_path, capsys):
    folder, config = _fixture("mmdet3_autoassign")
    dst = tmp_path / "converted.pth"
    cli_main(["--source", "mmdet3-autoassign", "--config-file", config, os.path.join(folder, "source.pth"), str(dst)])
    out = capsys.readouterr().out
    assert "checked against" in out and "note:" not in out
    # mmdetection's weights with the release's config: they fit, the differences are noted.
    _, cvpods_config = _fixture("cvpods_autoassign")
    cli_main(["--config-file", cvpods_config, os.path.join(folder, "source.pth"), str(tmp_path / "z.pth")])
    out = capsys.readouterr().out
    assert "note: MODEL.PIXEL_MEAN (Python config: model.pixel_mean) is [103.53, 116.28, 123.675]" \
        in out
    assert "SCORE_THRESH_ON (Python config: model.score_thresh_on) is 'cls_obj'" in out

    data = torch.load(dst, weights_only=True)
    assert data["source_format"] == "mmdet3-autoassign" and "center_prior.mu" in data["model"]
    with pytest.raises(SystemExit) as exc:
        cli_main(["--source", "cvpods-autoassign", os.path.join(folder, "source.pth"), str(tmp_path / "y.pth")])
    assert exc.value.code == 2
    assert "cannot be placed" in capsys.readouterr().err


def test_dcn_backbone_keys_map_onto_detectron2_deformable_blocks():
    """The R-101-DCN release: mmdet 2.11's DCNv2 ResNet keys (names and shapes dumped by
    tools/parity/mmdet2_dcn_keys.py; deformable convolution has no CPU kernel to run)."""
    import json

    from anchor_free.backbone import compiled_ops_available

    folder, config = _fixture("mmdet2_pseudo_iou")
    with open(os.path.join(FIXTURES, "mmdet2_dcn_keys.json")) as f:
        shapes = json.load(f)
    state = {k: v for k, v in load_source_checkpoint(os.path.join(folder, "source.pth")).items() if not k.startswith("backbone.")}
    state.update({k: torch.zeros(shape) for k, shape in shapes.items()})
    converted, dropped, _ = convert_state_dict(state, "mmdet2-pseudo-iou")
    offset = converted["backbone.bottom_up.res3.0.conv2_offset.weight"]
    # DCNv2 with 4 groups: (offset x, offset y, mask) x 3 x 3 kernel points x 4 groups.
    assert offset.shape[0] == 3 * 9 * 4
    assert "backbone.bottom_up.res2.0.conv2_offset.weight" not in converted  # res2 has no DCN
    assert sum(k.endswith("conv2_offset.bias") for k in converted) == 4 + 6 + 3
    if not compiled_ops_available():
        pytest.skip("building a deformable model needs Detectron2's compiled ops")
    from anchor_free_app.convert.mapping import check_against_model

    cfg = _cfg(
        config,
        "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, True, True, True]",
        "MODEL.RESNETS.DEFORM_MODULATED", "True",
        "MODEL.RESNETS.DEFORM_NUM_GROUPS", "4",
    )
    check_against_model(converted, build_model(cfg).state_dict(), "mmdet2-pseudo-iou")


def test_checkpoint_with_objects_of_a_missing_framework_loads(tmp_path, monkeypatch):
    """mmdetection / mmengine checkpoints pickle framework objects next to the state dict
    (``meta``, ``message_hub``): without the framework they become placeholders."""
    import sys
    import types

    framework = types.ModuleType("absent_framework")

    class HistoryBuffer:
        def __init__(self):
            self.values = [1, 2]

    HistoryBuffer.__module__ = "absent_framework"
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    framework.HistoryBuffer = HistoryBuffer
    monkeypatch.setitem(sys.modules, "absent_framework", framework)
    path = tmp_path / "ckpt.pth"
    torch.save({"meta": {"hub": HistoryBuffer()}, "state_dict": {"mu": torch.ones(2)}}, path)
    monkeypatch.delitem(sys.modules, "absent_framework")
    assert load_source_checkpoint(str(path)).keys() == {"mu"}
    with pytest.raises(FileNotFoundError, match="Source checkpoint not found"):
        load_source_checkpoint(str(tmp_path / "missing.pth"))
    torch.save({"state_dict": {"a": "not a tensor"}}, path)
    with pytest.raises(CheckpointLayoutError, match="'a' is a str"):
        load_source_checkpoint(str(path))


def test_mmdetection_post_processing_keys_are_checked():
    _, config = _fixture("mmdet3_autoassign")
    message = r"SCORE_THRESH_ON \(Python config: model.score_thresh_on\) must be one of"
    with pytest.raises(ValueError, match=message):
        build_model(_cfg(config, "MODEL.AUTOASSIGN.SCORE_THRESH_ON", "obj"))


def test_a_python_config_checks_a_conversion_as_its_yacs_twin(tmp_path, capsys):
    """Both systems build the full-size model: the reduced fixture's weights do not fit it, and
    the check says so in the same words."""
    folder, _ = _fixture("mmdet3_autoassign")
    errors = []
    for ext in ("yaml", "py"):
        name = f"autoassign_R_50_FPN_1x_mmdet.{ext}"
        config = os.path.join(REPO_ROOT, "configs", "AutoAssign", name)
        with pytest.raises(SystemExit) as exc:
            cli_main(["--config-file", config, os.path.join(folder, "source.pth"),
                      str(tmp_path / "x.pth")])  # fmt: skip
        assert exc.value.code == 2
        errors.append(capsys.readouterr().err)
    assert "does not fit the model built from the config" in errors[0]
    assert "checkpoint (4,) vs model (64,)" in errors[0]
    assert errors[1] == errors[0]
