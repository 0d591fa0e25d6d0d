#!/usr/bin/env python
"""
Train and evaluate the Pseudo-IoU and AutoAssign detectors (or any Detectron2 yacs model).

    python train_net.py --config-file configs/PseudoIoU/pseudo_iou_R_50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS path/to/model_final.pth
    python train_net.py --config-file CONFIG --resume          # continue from OUTPUT_DIR

The detector is chosen by MODEL.META_ARCHITECTURE ("PseudoIoU" or "AutoAssign"). MODEL.DEVICE
(Detectron2's default: cuda) is checked before any worker starts: cuda without CUDA, or
--num-gpus above the number of GPUs, is an error. On the CPU, pass MODEL.DEVICE cpu; --num-gpus N
then starts N CPU worker processes (gloo).
"""
from typing import Optional, Sequence

from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from anchor_free_app.checkpoint import SafeDetectionCheckpointer
from anchor_free_app.config import setup_cfg
from anchor_free_app.engine import Trainer
from anchor_free_app.launch import launch


def setup(args):
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS and not args.resume:
            raise ValueError("--eval-only needs a trained model: pass MODEL.WEIGHTS path/to/model.pth")
        model = Trainer.build_model(cfg)
        # strict: a checkpoint of another architecture is an error, not a half-loaded model
        SafeDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main(argv: Optional[Sequence[str]] = None) -> None:
    args = default_argument_parser().parse_args(argv)
    # The config is read here, in the launching process, so that a device that is not there
    # (MODEL.DEVICE cuda without CUDA, --num-gpus above the GPU count) is an error before any
    # worker process starts; ``launch`` logs which device and how many workers.
    setup_logger(name="anchor_free_app.launch", abbrev_name="launch")
    cfg = setup_cfg(args.config_file, args.opts)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        device=cfg.MODEL.DEVICE,
    )


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
