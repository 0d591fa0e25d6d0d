"""The Python (LazyConfig) configs against their yacs twins: the same model (module tree,
parameter names, shapes, frozen parameters, every setting), the same run (optimizer groups, lr
schedule, data, resize, batch, output, checks), with the same weights the same losses and
detections, and a short training through each front end with the same losses at every iteration.
"""
import dataclasses
import os

import pytest
import torch
from common import REPO_ROOT, TINY_DATA_PYTHON
from omegaconf import ListConfig

from anchor_free.backbone import compiled_ops_available
from anchor_free_app.config import build_model_from_config, run_settings, setup_cfg
from anchor_free_app.config import setup_python_cfg
from anchor_free_app.engine import PythonConfigTrainer, Trainer
from detectron2.config import instantiate
from detectron2.data import detection_utils
from detectron2.solver import build_lr_scheduler
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

CONFIGS = os.path.join(REPO_ROOT, "configs")
# Python config -> the yacs config it was checked against.
TWINS = {
    f"{d}/{name}.py": f"{d}/{name}.yaml"
    for d, names in {
        "PseudoIoU": [
            "pseudo_iou_R_50_FPN_1x", "pseudo_iou_R_101_FPN_1x", "pseudo_iou_R_101_FPN_DCN_2x",
            "pseudo_iou_R_50_FPN_1x_mmdet", "pseudo_iou_R_101_FPN_1x_mmdet",
            "pseudo_iou_R_101_FPN_DCN_2x_mmdet", "pseudo_iou_R_18_FPN_demo",
            "af_baseline_R_18_FPN_demo",
        ],
        "AutoAssign": [
            "autoassign_R_50_FPN_1x", "autoassign_R_50_FPN_1x_cvpods",
            "autoassign_R_50_FPN_1x_mmdet",
            "autoassign_R_18_FPN_demo",
        ],
        "demo": ["retinanet_R_18_FPN_demo"],
    }.items()
    for name in names
}  # fmt: skip
DEMO_TWINS = [p for p in TWINS if p.endswith("_demo.py")]
# Configs that only change the training twin's weights and output folder (test_same_model checks
# that their models equal): their forward passes are those of the twin.
SAME_MODEL_AS_IMPORTED = {
    "PseudoIoU/pseudo_iou_R_50_FPN_1x_mmdet.py", "PseudoIoU/pseudo_iou_R_101_FPN_1x_mmdet.py",
    "PseudoIoU/pseudo_iou_R_101_FPN_DCN_2x_mmdet.py", "AutoAssign/autoassign_R_50_FPN_1x_cvpods.py",
}  # fmt: skip


def load_twins(python_config: str, yacs_opts=(), python_opts=()):
    yacs_cfg = setup_cfg(
        os.path.join(CONFIGS, TWINS[python_config]),
        ["MODEL.DEVICE", "cpu", *yacs_opts],
        freeze=False,
    )
    python_cfg = setup_python_cfg(
        os.path.join(CONFIGS, python_config), ["train.device=cpu", *python_opts]
    )
    return yacs_cfg, python_cfg


def needs_dcn(python_config: str) -> bool:
    return "DCN" in python_config


def test_every_python_config_has_a_yacs_twin():
    found = {
        os.path.relpath(os.path.join(folder, f), CONFIGS)
        for folder, _, files in os.walk(CONFIGS)
        for f in files
        if f.endswith(".py") and not os.path.relpath(folder, CONFIGS).startswith("common")
    }
    assert found == set(TWINS)
    assert all(os.path.isfile(os.path.join(CONFIGS, y)) for y in TWINS.values())


def module_settings(model: torch.nn.Module) -> dict:
    """Every module's type and plain settings (numbers, strings, flags, tuples of them, the
    assigner dataclass, the point strides and offset), and each parameter's shape and frozen
    state: what a config decides, apart from the random initial values."""
    plain = (int, float, str, bool, type(None))
    settings = {}
    for name, module in model.named_modules():
        values = {"type": type(module).__qualname__}
        for key, value in vars(module).items():
            if key.startswith("_") or key == "training":
                continue
            if isinstance(value, ListConfig):  # Detectron2's own models keep instantiate's lists
                value = list(value)
            if isinstance(value, plain) or (
                isinstance(value, (tuple, list)) and all(isinstance(v, plain) for v in value)
            ):
                values[key] = tuple(value) if isinstance(value, list) else value
            elif dataclasses.is_dataclass(value):
                values[key] = dataclasses.asdict(value)
        settings[name] = values
    for name, param in model.named_parameters():
        settings[name] = (tuple(param.shape), param.dtype, param.requires_grad)
    for name, buf in model.named_buffers():
        settings[name] = (tuple(buf.shape), buf.dtype, buf.flatten()[:8].tolist())
    return settings


@pytest.mark.parametrize("python_config", sorted(TWINS))
def test_same_model(python_config):
    yacs_cfg, python_cfg = load_twins(python_config)
    if needs_dcn(python_config) and not compiled_ops_available():
        for cfg in (yacs_cfg, python_cfg):  # the same error, at build time, on both
            with pytest.raises(RuntimeError, match="DEFORM_ON_PER_STAGE.*compiled ops"):
                build_model_from_config(cfg)
        return
    yacs_model = build_model_from_config(yacs_cfg)
    python_model = build_model_from_config(python_cfg)
    assert module_settings(python_model) == module_settings(yacs_model)
    if hasattr(python_model, "point_generator"):  # plain lists, as from yacs (TorchScript types)
        assert type(python_model.head_in_features) is list
        assert type(python_model.point_generator.strides) is list


def _as_comparable(settings) -> dict:
    fields = dataclasses.asdict(settings)
    for key in ("config_system", "device_key", "num_classes_key"):  # how each system names it
        fields.pop(key)
    return fields


def _augmentation(aug) -> tuple:
    """An augmentation's type and arguments (lists and tuples alike; a resize by the short sides
    it can draw, so that "range" (800, 800) equals "choice" (800,))."""
    args = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in vars(aug).items()}
    if args.pop("is_range", False):
        low, high = args["short_edge_length"]
        args["short_edge_length"] = tuple(range(low, high + 1))
    if "sample_style" in args:
        args["short_edge_length"] = tuple(sorted(set(args["short_edge_length"])))
        del args["sample_style"]
    return type(aug).__name__, args


def _optimizer_groups(optimizer, model) -> dict:
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {}
    for group in optimizer.param_groups:
        # foreach / fused: how torch runs the same update (main's yacs path asks for foreach)
        ignored = ("params", "initial_lr", "foreach", "fused")
        settings = {k: v for k, v in group.items() if k not in ignored}
        for p in group["params"]:
            groups[names[id(p)]] = settings
    return groups


@pytest.mark.parametrize("python_config", sorted(p for p in TWINS if not needs_dcn(p)))
def test_same_run(python_config):
    yacs_cfg, python_cfg = load_twins(python_config)
    assert _as_comparable(run_settings(python_cfg)) == _as_comparable(run_settings(yacs_cfg))
    assert python_cfg.train.max_iter == yacs_cfg.SOLVER.MAX_ITER
    assert python_cfg.train.checkpointer.period == yacs_cfg.SOLVER.CHECKPOINT_PERIOD
    assert python_cfg.train.eval_period == yacs_cfg.TEST.EVAL_PERIOD
    assert python_cfg.train.seed == yacs_cfg.SEED
    assert python_cfg.dataloader.train.total_batch_size == yacs_cfg.SOLVER.IMS_PER_BATCH
    assert python_cfg.dataloader.train.num_workers == yacs_cfg.DATALOADER.NUM_WORKERS
    assert python_cfg.dataloader.train.mapper.image_format == yacs_cfg.INPUT.FORMAT
    assert not python_cfg.dataloader.train.mapper.use_instance_mask
    for is_train, section in ((True, "train"), (False, "test")):
        python_augs = instantiate(python_cfg.dataloader[section].mapper.augmentations)
        yacs_augs = detection_utils.build_augmentation(yacs_cfg, is_train=is_train)
        assert [_augmentation(a) for a in python_augs] == [_augmentation(a) for a in yacs_augs]

    # the optimizer: every parameter's group settings, the step's gradient clipping
    model = build_model_from_config(yacs_cfg)
    yacs_optimizer = Trainer.build_optimizer(yacs_cfg, model)
    python_cfg.optimizer.params.model = model
    python_optimizer = instantiate(python_cfg.optimizer)
    assert type(python_optimizer).__name__ == type(yacs_optimizer).__name__
    assert _optimizer_groups(python_optimizer, model) == _optimizer_groups(yacs_optimizer, model)

    # the learning rate at every milestone and warm-up edge, and around them
    max_iter = yacs_cfg.SOLVER.MAX_ITER
    yacs_scheduler = build_lr_scheduler(yacs_cfg, yacs_optimizer)
    multiplier = instantiate(python_cfg.lr_multiplier)
    edges = [0, 1, yacs_cfg.SOLVER.WARMUP_ITERS, max_iter - 1, *yacs_cfg.SOLVER.STEPS]
    for it in sorted({max(0, min(max_iter - 1, e + d)) for e in edges for d in (-1, 0, 1)}):
        expected = yacs_scheduler._multiplier(it / max_iter)
        assert multiplier(it / max_iter) == pytest.approx(expected, rel=1e-12), it


def synthetic_batch():
    """Two BGR images of different sizes with three boxes each (classes < 4)."""
    from detectron2.structures import Boxes, Instances

    generator = torch.Generator().manual_seed(0)
    batch = []
    for height, width in ((96, 128), (128, 96)):
        image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(
            torch.tensor([[4.0, 6.0, 60.0, 50.0], [30.0, 20.0, 90.0, 94.0], [0.0, 0.0, 16.0, 12.0]])
        )
        instances.gt_classes = torch.tensor([0, 3, 1])
        batch.append({"image": image, "instances": instances, "height": height, "width": width})
    return batch


@pytest.mark.parametrize("python_config", sorted(set(TWINS) - SAME_MODEL_AS_IMPORTED))
def test_same_weights_give_same_losses_and_detections(python_config):
    yacs_cfg, python_cfg = load_twins(python_config)
    if needs_dcn(python_config):
        pytest.skip("Detectron2's deformable convolution runs on CUDA only (test_same_model)")
    yacs_model = build_model_from_config(yacs_cfg)
    python_model = build_model_from_config(python_cfg)
    python_model.load_state_dict(yacs_model.state_dict())
    batch = synthetic_batch()
    with torch.no_grad(), EventStorage(0):  # the detectors log assignment statistics there
        losses = [model(batch) for model in (yacs_model, python_model)]
    assert losses[0].keys() == losses[1].keys()
    for key in losses[0]:
        assert torch.equal(losses[0][key], losses[1][key]), key
    detections = []
    for model in (yacs_model, python_model):
        model.eval()
        model.test_score_thresh = 0.0  # every score passes: detections whatever the weights
        with torch.no_grad():
            detections.append(model([{k: v for k, v in x.items() if k != "instances"}
                                     for x in batch]))  # fmt: skip
    for yacs_out, python_out in zip(*detections):
        yacs_inst, python_inst = yacs_out["instances"], python_out["instances"]
        assert len(yacs_inst) > 0
        assert torch.equal(yacs_inst.pred_boxes.tensor, python_inst.pred_boxes.tensor)
        assert torch.equal(yacs_inst.scores, python_inst.scores)
        assert torch.equal(yacs_inst.pred_classes, python_inst.pred_classes)


# The demo data at 64 px, 2 images a batch, 3 iterations, in each system's words.
TINY_YACS = [
    "DATASETS.DEMO_SHAPES.NUM_TRAIN", "16", "DATASETS.DEMO_SHAPES.NUM_VAL", "4",
    "DATASETS.DEMO_SHAPES.IMAGE_SIZE", "64", "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "3",
    "SOLVER.STEPS", "(2,)", "SOLVER.WARMUP_ITERS", "1",
]  # fmt: skip
TINY_PYTHON = [o for o in TINY_DATA_PYTHON if not o.startswith("train.device")] + [
    "train.max_iter=3", "lr_multiplier.scheduler.milestones=[2,3]",
    "lr_multiplier.scheduler.values=[1.0,0.1]", "lr_multiplier.warmup_length=0.3333333333333333",
]  # fmt: skip


def _train(trainer_class, cfg, init_checkpoint):
    seed_all_rng(42)  # what default_setup does with SEED / train.seed 42
    trainer = trainer_class(cfg)
    trainer.checkpointer.load(init_checkpoint)
    trainer.train()
    history = trainer.storage.histories()
    return {k: [v for v, _ in h.values()] for k, h in history.items() if k.startswith("loss")}


@pytest.mark.parametrize("python_config", [p for p in DEMO_TWINS if "af_baseline" not in p])
def test_short_training_gives_the_same_losses_at_every_iteration(python_config, tmp_path):
    yacs_cfg, python_cfg = load_twins(
        python_config,
        TINY_YACS + ["OUTPUT_DIR", str(tmp_path / "yacs")],
        TINY_PYTHON + [f"train.output_dir={tmp_path / 'python'}"],
    )
    init = str(tmp_path / "init.pth")
    torch.save({"model": build_model_from_config(yacs_cfg).state_dict()}, init)
    yacs_losses = _train(Trainer, yacs_cfg, init)
    python_losses = _train(PythonConfigTrainer, python_cfg, init)
    assert yacs_losses.keys() == python_losses.keys() and len(yacs_losses) >= 2
    for key, values in yacs_losses.items():
        assert len(values) == 3
        # The first step is bitwise the same; later ones within float32 rounding: two trainings
        # through the same front end differ as much on the CPU (in Pseudo-IoU's last bits).
        assert python_losses[key][0] == values[0], key
        assert python_losses[key] == pytest.approx(values, rel=1e-5, abs=0), key
