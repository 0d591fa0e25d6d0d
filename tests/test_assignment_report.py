"""The assignment report (anchor_free_app/assignment_report, tools/assignment_report.py): its
boxes are the training mapper's, its counts are what training's ``label_points`` (Pseudo-IoU) and
``positive_terms_single_image`` (AutoAssign) give on the same images, batched as a trainer batches
them (the backbone run on the padded batch for the feature grids), on the built-in dataset and
on crafted scenes; sweeps are monotone; outputs, plots and errors."""
import copy
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from anchor_free_app.assignment_report import (
    assign_objects,
    build_rules,
    collect_annotations,
    make_report,
    mapper_instances,
    read_settings,
    resize_objects,
    run_report,
    write_report,
)
from anchor_free_app.assignment_report.compute import feature_grid_sizes
from anchor_free_app.config import setup_cfg
from detectron2.data import DatasetMapper, get_detection_dataset_dicts
from detectron2.structures import BoxMode, ImageList

from common import AA_DEMO, PIOU_DEMO, REPO_ROOT, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 16 demo images of 64 x 64, trained at short side 48 or 80: the resize scales the (integer)
# boxes, which the mapper then truncates.
DEMO = [
    "DATASETS.DEMO_SHAPES.NUM_TRAIN", "16", "DATASETS.DEMO_SHAPES.NUM_VAL", "4",
    "DATASETS.DEMO_SHAPES.IMAGE_SIZE", "64", "INPUT.MIN_SIZE_TRAIN", "(48, 80)",
    "INPUT.MAX_SIZE_TRAIN", "120", "MODEL.DEVICE", "cpu",
]  # fmt: skip
SCALES = (48, 80)


@pytest.fixture(scope="module")
def piou():
    return read_settings(PIOU_DEMO, DEMO)


@pytest.fixture(scope="module")
def autoassign():
    return read_settings(AA_DEMO, DEMO)


def _records():
    return get_detection_dataset_dicts(["demo_shapes_train"], filter_empty=True)


def _xywh(x, y, w, h, crowd=0, cls=0, mode=BoxMode.XYWH_ABS):
    return {"bbox": [x, y, w, h], "bbox_mode": mode, "category_id": cls, "iscrowd": crowd}


def crafted_records():
    """Images of several sizes: equal-area overlapping boxes and identical boxes (ties), boxes
    smaller than a P3 cell, boxes partly and wholly outside the image, inverted and empty
    boxes, crowd boxes, an image without boxes and one with crowd boxes only; integer, float
    and XYXY boxes."""
    return [
        {"image_id": "ties", "height": 64, "width": 96, "annotations": [
            _xywh(10, 10, 30, 30), _xywh(10, 10, 30, 30, cls=1),  # identical: a full tie
            _xywh(25.0, 20.0, 30.0, 30.0, cls=2),  # same area as the first, overlapping
            _xywh(60.5, 5.25, 20.75, 40.125, cls=3),
        ]},
        {"image_id": "tiny", "height": 50, "width": 70, "annotations": [
            _xywh(3, 3, 2, 2), _xywh(17.5, 9.5, 3.0, 4.0, cls=1),  # no point inside
            _xywh(30, 20, 6, 6, cls=2), _xywh(40.2, 30.7, 0.0, 5.0),  # empty: dropped
        ]},
        {"image_id": "outside", "height": 40, "width": 40, "annotations": [
            _xywh(-10.5, -8.0, 30.0, 25.0), _xywh(30, 30, 40, 40, cls=1),  # partly outside
            _xywh(50, 50, 10, 10, cls=2),  # wholly outside: empty after clipping, dropped
            _xywh(35.0, 20.0, -6.0, 10.0, cls=3),  # inverted: the mapper makes it upright
            {"bbox": [5.0, 25.0, 39.5, 55.0], "bbox_mode": BoxMode.XYXY_ABS,
             "category_id": 0, "iscrowd": 0},
        ]},
        {"image_id": "crowd", "height": 64, "width": 64, "annotations": [
            _xywh(0, 0, 64, 64, crowd=1), _xywh(8, 8, 24, 24, cls=1),
            _xywh(20, 20, 30, 30, crowd=1, cls=2),
        ]},
        {"image_id": "no boxes", "height": 48, "width": 64, "annotations": []},
        {"image_id": "crowd only", "height": 48, "width": 64, "annotations": [
            _xywh(0, 0, 20, 20, crowd=1),
        ]},
    ]  # fmt: skip


# ------------------------------------------------------------------------------- references
def _padded_batch_grids(model, image_sizes):
    """The feature grids and points of one training batch of images of ``image_sizes``: the
    backbone run on the batch padded as DenseDetector.preprocess_image pads it."""
    images = ImageList.from_tensors(
        [torch.zeros(3, h, w) for h, w in image_sizes], model.backbone.size_divisibility
    )
    with torch.no_grad():
        features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    return model.point_generator(features), [tuple(f.shape[-2:]) for f in features]


def label_points_counts(model, instances, image_sizes, assigner):
    """(G, L) positives per object and level from PseudoIoU.label_points on one batch."""
    points, grid_sizes = _padded_batch_grids(model, image_sizes)
    model = copy.copy(model)
    model.assigner = assigner
    targets = model.label_points(points, instances, grid_sizes)
    level = torch.repeat_interleave(
        torch.arange(len(points)), torch.tensor([len(p) for p in points])
    )
    out = []
    for n, inst in enumerate(instances):
        m = targets.matched_idxs[n]
        flat = m[m >= 0] * len(points) + level[m >= 0]
        out.append(torch.bincount(flat, minlength=len(inst) * len(points)).view(-1, len(points)))
    return torch.cat(out).numpy()


def autoassign_reference(model, prior, instances, image_sizes):
    """In-box locations and (sum w)^2 / sum w^2 per object from positive_terms_single_image."""
    points, grid_sizes = _padded_batch_grids(model, image_sizes)
    centers = torch.cat([p.get_centers() for p in points])
    model = copy.deepcopy(model)  # a shallow copy would share _modules with the original
    model.center_prior = prior
    inbox, effective = [], []
    for inst in instances:
        num = len(inst)
        with torch.no_grad():
            pairs, terms = model.positive_terms_single_image(
                torch.full((len(centers), model.num_classes), 0.5),
                torch.ones(len(centers), 4),
                inst.gt_boxes.tensor,
                inst.gt_classes,
                grid_sizes,
                points=centers,
            )
        w = terms.prior.double()
        total = torch.zeros(num, dtype=torch.float64).index_add_(0, pairs.gt_idx, w)
        sq = torch.zeros(num, dtype=torch.float64).index_add_(0, pairs.gt_idx, w * w)
        inbox.append(torch.bincount(pairs.gt_idx, minlength=num))
        effective.append(torch.where(sq > 0, total**2 / sq.clamp(min=1e-300), 0.0))
    return torch.cat(inbox).numpy(), torch.cat(effective).numpy()


def _all_rules(settings):
    return build_rules(
        settings, thresholds=[0.0, 0.25, 0.5, 0.75], rules=["af_baseline", "centerness",
                                                              "scaled_box"],
    )  # fmt: skip


# -------------------------------------------------------------------------------- mapper boxes
def test_boxes_are_the_mappers_on_crafted_records():
    records = crafted_records()
    table = collect_annotations(records)
    assert table.num_crowd == 3
    for scale, max_size in ((48, 120), (100, 1000), (37, 50)):
        objects = resize_objects(table, scale, max_size)
        reference = [mapper_instances(r, scale, max_size) for r in records]
        boxes = torch.cat([r.gt_boxes.tensor for r in reference]).numpy()
        assert np.array_equal(objects.boxes, boxes)  # bitwise
        assert np.array_equal(
            objects.classes, torch.cat([r.gt_classes for r in reference]).numpy()
        )
        assert objects.num_dropped == 2  # the empty box and the one wholly outside
        expected_hw = [r.image_size for r in reference]
        assert [tuple(hw) for hw in objects.input_hw.tolist()] == expected_hw


def test_mapper_reference_is_detectron2s_dataset_mapper(piou):
    """mapper_instances (no pixels) == Detectron2's training DatasetMapper (reads the images),
    flips off, on the demo images resized 64 -> 80 (integer boxes truncated)."""
    cfg = setup_cfg(PIOU_DEMO, DEMO + ["INPUT.RANDOM_FLIP", "none", "INPUT.MIN_SIZE_TRAIN",
                                       "(80,)"], freeze=False)  # fmt: skip
    mapper = DatasetMapper(cfg, is_train=True)
    for record in _records()[:6]:
        mapped = mapper(copy.deepcopy(record))["instances"]
        ours = mapper_instances(record, 80, 120)
        assert mapped.image_size == ours.image_size == (80, 80)
        assert torch.equal(mapped.gt_boxes.tensor, ours.gt_boxes.tensor)
        assert torch.equal(mapped.gt_classes, ours.gt_classes)


@pytest.mark.parametrize("config", [PIOU_DEMO, AA_DEMO])
def test_feature_grids_are_the_backbones(config, piou, autoassign):
    model = (piou if config == PIOU_DEMO else autoassign).model
    strides = [int(s) for s in model.point_generator.strides]
    for hw in ((64, 64), (96, 160), (33, 47), (130, 70)):
        images = ImageList.from_tensors([torch.zeros(3, *hw)], model.backbone.size_divisibility)
        _, grids = _padded_batch_grids(model, [hw])
        assert feature_grid_sizes(tuple(images.tensor.shape[-2:]), strides) == grids


# ------------------------------------------------------------------------ counts = training's
def _compare_piou(settings, records, scales, batch_points=1 << 22, workers=1):
    rules = _all_rules(settings)
    table = collect_annotations(records)
    for scale in scales:
        objects = resize_objects(table, scale, settings.max_size)
        result = assign_objects(
            settings.model, objects, rules, table.image_ids, settings.num_classes,
            max_points=batch_points, workers=workers,
        )  # fmt: skip
        reference = [mapper_instances(r, scale, settings.max_size) for r in records]
        sizes = [r.image_size for r in reference]
        for counts in result.rules:
            expected = label_points_counts(settings.model, reference, sizes, counts.rule.assigner)
            assert np.array_equal(counts.per_level, expected), counts.rule.name
            assert np.all(counts.positives <= result.won)
        assert np.all(result.won <= result.candidates.sum(axis=1))
        yield scale, result


def test_pseudo_iou_counts_equal_label_points_on_the_demo_dataset(piou):
    # Several batches, assigned by two threads: still the same counts.
    results = dict(_compare_piou(piou, _records(), SCALES, batch_points=300, workers=2))
    assert results[48].num_batches > 1
    config = results[80].rules[0]
    assert config.rule.is_config and config.rule.assigner == piou.model.assigner
    assert config.positives.sum() > 0


def test_pseudo_iou_counts_equal_label_points_on_crafted_scenes(piou):
    records = crafted_records()
    results = dict(_compare_piou(piou, records, (48, 100)))
    result = results[100]
    objects = result.objects
    ids = [records[i]["image_id"] for i in objects.image_index]
    config = result.rules[0]
    first, twin = [i for i, name in enumerate(ids) if name == "ties"][:2]
    # The identical twin loses every candidate point to the first box (lowest index).
    assert result.candidates[twin].sum() == result.candidates[first].sum() > 0
    assert result.won[twin] == 0 and config.positives[twin] == 0
    assert result.points_in_several >= result.candidates[twin].sum()
    overlaps = config.overlaps
    assert sum(overlaps.values()) == result.points_in_several
    # The 2 x 2 box holds no point: no candidate, under every rule.
    tiny = ids.index("tiny")
    assert result.candidates[tiny].sum() == 0
    assert all(r.positives[tiny] == 0 for r in result.rules)
    # Crowd boxes are ignored: the crowd image's one object, alone, keeps its positives.
    crowd = ids.index("crowd")
    assert ids.count("crowd") == 1 and result.won[crowd] == result.candidates[crowd].sum()
    assert "no boxes" not in ids and "crowd only" not in ids


def test_threshold_sweep_is_monotone(piou):
    records = _records() + crafted_records()
    rules = build_rules(piou, thresholds=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], rules=["af_baseline"])
    table = collect_annotations(records)
    objects = resize_objects(table, 80, piou.max_size)
    result = assign_objects(piou.model, objects, rules, table.image_ids, piou.num_classes)
    by_name = {r.rule.name.replace(" [config]", ""): r for r in result.rules}
    af = by_name["AF-baseline (all in box)"].positives
    sweep = [by_name[f"Pseudo-IoU > {t:g}"] for t in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]
    # Every in-box point has a Pseudo-IoU > 0: T = 0 is the AF-baseline, point for point.
    assert np.array_equal(sweep[0].per_level, by_name["AF-baseline (all in box)"].per_level)
    assert np.array_equal(af, result.won)
    for low, high in zip(sweep, sweep[1:]):
        assert np.all(high.positives <= low.positives)  # per object
        assert np.all(high.per_level <= low.per_level)  # per object and level
    assert sweep[-1].positives.sum() == 0  # Pseudo-IoU <= 1
    assert sweep[2].positives.sum() < sweep[1].positives.sum()  # the sweep does something
    zero = [int((r.positives == 0).sum()) for r in sweep]
    assert zero == sorted(zero)


def _trained_prior_checkpoint(settings, path):
    model = copy.deepcopy(settings.model)
    with torch.no_grad():
        k = model.center_prior.mu.shape[0]
        model.center_prior.mu.copy_(torch.linspace(-0.4, 0.4, 2 * k).view(k, 2))
        model.center_prior.sigma.copy_(torch.linspace(0.5, 2.5, 2 * k).view(k, 2))
    torch.save({"model": model.state_dict()}, path)
    return model.center_prior


def test_autoassign_counts_equal_the_training_pairs(autoassign, tmp_path):
    path = str(tmp_path / "trained.pth")
    trained = _trained_prior_checkpoint(autoassign, path)
    settings = dataclasses.replace(autoassign, weights=path)
    rules = build_rules(settings, priors=["init", "weights"])
    assert len(rules) == 2
    assert torch.equal(rules[1].center_prior.sigma, trained.sigma)
    records = _records()[:8] + crafted_records()
    table = collect_annotations(records)
    for scale in SCALES:
        objects = resize_objects(table, scale, settings.max_size)
        result = assign_objects(
            settings.model, objects, rules, table.image_ids, settings.num_classes
        )
        reference = [mapper_instances(r, scale, settings.max_size) for r in records]
        sizes = [r.image_size for r in reference]
        for counts in result.rules:
            inbox, effective = autoassign_reference(
                settings.model, counts.rule.center_prior, reference, sizes
            )
            assert np.array_equal(result.candidates.sum(axis=1), inbox)
            np.testing.assert_allclose(counts.effective, effective, rtol=1e-6, atol=1e-9)
            assert np.all(counts.effective <= inbox + 1e-6)
        assert not np.allclose(result.rules[0].effective, result.rules[1].effective)


def test_prior_from_weights_without_a_trained_prior_is_an_error(autoassign, tmp_path):
    path = str(tmp_path / "untrained.pth")
    torch.save({"model": autoassign.model.state_dict()}, path)
    with pytest.raises(ValueError, match="--prior weights: MODEL.WEIGHTS=.*no trained center"):
        build_rules(dataclasses.replace(autoassign, weights=path), priors=["weights"])
    with pytest.raises(ValueError, match="--prior weights needs MODEL.WEIGHTS"):
        build_rules(autoassign, priors=["weights"])


# ------------------------------------------------------------------------- errors and outputs
def test_errors_name_the_argument(piou, autoassign):
    with pytest.raises(ValueError, match="--dataset: \\['no_such_dataset'\\] not registered"):
        run_report(PIOU_DEMO, DEMO, datasets=["no_such_dataset"], output_dir="/nonexistent")
    with pytest.raises(ValueError, match="--prior applies to AutoAssign configs"):
        build_rules(piou, priors=["init"])
    with pytest.raises(ValueError, match="--thresholds applies to Pseudo-IoU configs"):
        build_rules(autoassign, thresholds=[0.3])
    with pytest.raises(ValueError, match="--rules applies to Pseudo-IoU configs"):
        build_rules(autoassign, rules=["centerness"])
    with pytest.raises(ValueError, match="--thresholds: 1.5 is outside \\[0, 1\\]"):
        build_rules(piou, thresholds=[0.3, 1.5])
    with pytest.raises(ValueError, match="--rules: \\['iou'\\] not in"):
        build_rules(piou, rules=["iou"])
    with pytest.raises(ValueError, match="category_id 7 outside \\[0, 4\\)"):
        records = [{"image_id": 3, "height": 64, "width": 64,
                    "annotations": [_xywh(1, 1, 20, 20, cls=7)]}]  # fmt: skip
        table = collect_annotations(records)
        assign_objects(piou.model, resize_objects(table, 64, 64), build_rules(piou),
                       table.image_ids, piou.num_classes)  # fmt: skip
    with pytest.raises(ValueError, match="has no 'height'"):
        collect_annotations([{"image_id": 5, "file_name": "a.png", "annotations": []}])


def test_report_files_and_plots(autoassign, tmp_path):
    report = make_report(
        autoassign, _records(), SCALES, build_rules(autoassign), dataset_names=["demo"]
    )
    paths = write_report(report, str(tmp_path))
    for p in paths:
        assert os.path.getsize(p) > 0, p
    _check_png(tmp_path / "per_object_by_size.png")
    _check_png(tmp_path / "zero_by_size.png")
    data = json.loads((tmp_path / "report.json").read_text())
    assert [s["scale"] for s in data["summaries"]] == list(SCALES)
    rows = data["summaries"][0]["rows"]
    assert [r["quantity"] for r in rows] == ["in-box locations", "effective locations"]
    assert rows[0]["by_size"]["all"]["objects"] == data["summaries"][0]["objects"]


def _check_png(path):
    import matplotlib.image

    image = matplotlib.image.imread(str(path))
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # not blank: axes, lines


def test_cli_on_the_builtin_dataset(tmp_path):
    out = tmp_path / "report"
    text = run(
        ["tools/assignment_report.py", "--config-file", PIOU_DEMO, "--thresholds", "0.3,0.5",
         "--rules", "af_baseline,centerness,scaled_box", "--output", str(out)] + DEMO
    )  # fmt: skip
    assert "| Pseudo-IoU > 0.4 [config] | positive points |" in text
    assert "## Short side 48" in text and "## Short side 80" in text and "## Facts" in text
    names = ["report.md", "report.json", "summary.csv", "levels.csv", "objects_with_zero.csv",
             "per_object_by_size.png", "zero_by_size.png"]  # fmt: skip
    for name in names:
        assert (out / name).stat().st_size > 0, name
    _check_png(out / "zero_by_size.png")
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("scale,rule,quantity,bucket,objects,mean")
    assert len(summary) == 1 + 2 * 6 * 5  # scales x rules x size buckets


def _cli_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "assignment_report_cli", os.path.join(REPO_ROOT, "tools", "assignment_report.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(
    "args, message",
    [
        (["--thresholds", "0.3,1.5"], "argument --thresholds: 1.5 is outside [0, 1]"),
        (["--prior", "init"], "--prior applies to AutoAssign configs"),
        (["--dataset", "nope"], "--dataset: ['nope'] not registered"),
        (["--scales", "0"], "argument --scales: short-side lengths must be >= 1"),
    ],
)
def test_cli_errors_name_the_argument(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli_main()(["--config-file", PIOU_DEMO] + args + DEMO)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["PseudoIoU/pseudo_iou_R_18_FPN_demo", "AutoAssign/autoassign_R_18_FPN_demo"]
)
def test_python_config_gives_the_report_of_its_yacs_twin(name, tmp_path):
    python_demo = [
        "dataloader.demo_shapes.num_train=16", "dataloader.demo_shapes.num_val=4",
        "dataloader.demo_shapes.image_size=64",
        "dataloader.train.mapper.augmentations.0.short_edge_length=[48,80]",
        "dataloader.train.mapper.augmentations.0.max_size=120", "train.device=cpu",
    ]  # fmt: skip
    summaries = []
    for ext, opts in (("yaml", DEMO), ("py", python_demo)):
        out = tmp_path / ext
        config = os.path.join(REPO_ROOT, "configs", f"{name}.{ext}")
        assert _cli_main()(["--config-file", config, "--output", str(out)] + opts) in (0, None)
        summaries.append((out / "summary.csv").read_text())
    assert summaries[0] == summaries[1] and len(summaries[0].splitlines()) > 10
