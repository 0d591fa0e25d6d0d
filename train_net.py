#!/usr/bin/env python
"""
Train and evaluate the Pseudo-IoU and AutoAssign detectors (or any Detectron2 model), from a yacs
(``.yaml``) or a Python (LazyConfig, ``.py``) config: one training application, two front ends.

    python train_net.py --config-file configs/PseudoIoU/pseudo_iou_R_50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file configs/PseudoIoU/pseudo_iou_R_50_FPN_1x.py --num-gpus 8
    python train_net.py --config-file CONFIG.yaml --eval-only MODEL.WEIGHTS path/to/model_final.pth
    python train_net.py --config-file CONFIG.py --eval-only train.init_checkpoint=path/to/model.pth
    python train_net.py --config-file CONFIG --resume          # continue from the output folder

Overrides: trailing ``KEY VALUE`` pairs for yacs, ``path.key=value`` for Python configs (as
Detectron2's ``tools/train_net.py`` and ``tools/lazyconfig_train_net.py``). The device
(``MODEL.DEVICE`` / ``train.device``, Detectron2's default: cuda) is checked before any worker
starts: cuda without CUDA, or --num-gpus above the number of GPUs, is an error. On the CPU, pass
``MODEL.DEVICE cpu`` / ``train.device=cpu``; --num-gpus N then starts N CPU worker processes (gloo).
"""
from typing import Optional, Sequence

from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from anchor_free_app.checkpoint import SafeDetectionCheckpointer
from anchor_free_app.config import AnyConfig, load_config, run_settings
from anchor_free_app.engine import PythonConfigTrainer, Trainer
from anchor_free_app.launch import launch


def setup(args) -> AnyConfig:
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def trainer_class(cfg: AnyConfig):
    """:class:`Trainer` for a yacs config, :class:`PythonConfigTrainer` for a Python config."""
    return Trainer if isinstance(cfg, CfgNode) else PythonConfigTrainer


def main(args):
    cfg = setup(args)
    trainer = trainer_class(cfg)
    if args.eval_only:
        settings = run_settings(cfg)
        if not settings.weights and not args.resume:
            weights = "MODEL.WEIGHTS path/to/model.pth" if isinstance(cfg, CfgNode) else (
                "train.init_checkpoint=path/to/model.pth"
            )
            raise ValueError(f"--eval-only needs a trained model: pass {weights}")
        model = trainer.build_model(cfg)
        # strict: a checkpoint of another architecture is an error, not a half-loaded model
        SafeDetectionCheckpointer(model, save_dir=settings.output_dir, strict=True).resume_or_load(
            settings.weights, resume=args.resume
        )
        results = trainer.test(cfg, model)
        if comm.is_main_process() and isinstance(cfg, CfgNode):
            verify_results(cfg, results)
        return results

    trainer = trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main(argv: Optional[Sequence[str]] = None) -> None:
    args = default_argument_parser().parse_args(argv)
    # The config is read here, in the launching process, so that a device that is not there
    # (cuda without CUDA, --num-gpus above the GPU count) is an error before any worker process
    # starts; ``launch`` logs which device and how many workers.
    setup_logger(name="anchor_free_app.launch", abbrev_name="launch")
    settings = run_settings(load_config(args.config_file, args.opts))
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        device=settings.device,
        device_key=settings.device_key,
    )


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
