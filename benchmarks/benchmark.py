#!/usr/bin/env python
"""
Cost of Pseudo-IoU and AutoAssign next to Detectron2's own RetinaNet and FCOS, how the label
assignment + loss grows with the number of objects and the image size, and how many host-device
synchronisations a training iteration makes.

    .venv/bin/python benchmarks/benchmark.py --output benchmarks/results          # make bench
    .venv/bin/python benchmarks/benchmark.py --syncs --output benchmarks/results  # bench-syncs

The four detectors are built in one process on the same backbone with identical weights, each
with its own standard head, 80 classes, on the same input batch (800x1333 images with 20 random
GT boxes each; 2 images on CUDA, 1 on the CPU by default), float32, on CUDA when present, else
the CPU (``benchmarks/models.py``). All four use the same inference score threshold
(``--score-thresh``, default 0.0) and keep 1000 candidates per level: with random weights no
score would pass a usual 0.05 threshold for some models and all would pass it for others (FCOS
ranks sqrt(cls x ctr)), so by default every level sends its top 1000 candidates to the
class-aware NMS, the same worst-case load for every model. Each model keeps its own NMS IoU
threshold and 100 detections per image.

The main run (interleaved A B C D A B C D ... after ``--warmup`` rounds; median; timing and
peak memory as in ``benchmarks/timing.py``):
    1. train step: ``model(batched_inputs)`` in train mode + backward of the summed losses;
    2. inference: eval mode, ``no_grad``, ``model(batched_inputs)`` with post-processing;
    3. assignment + loss alone: backbone + head run once (no grad), their outputs become
       detached leaves; ``model.forward_training(images, features, predictions, gt_instances)``
       (the same call for all four, "fwd") and the backward of its summed losses to those
       leaves ("fwd+bwd"; the targets use fwd+bwd); post-processing alone
       (``forward_inference`` on the same outputs) is timed the same way;
    4. the peak memory of every timed call (median).
The scaling sweep times 3. (fwd+bwd) and its peak memory per model for 1, 10, 100, 300 and 1000
GT boxes per image at 800x1333, and for image short sides 512 / 800 / 1333 (long side x
1333/800) at ``--boxes`` boxes per image, on ``--sweep-batch-size`` (1) image. The backbones
being identical, their features are computed once per image size.

Defaults: CUDA 2 images, 2 warm-up + 10 timed rounds (20 for assignment + loss and
post-processing), sweep 2 + 10; CPU 1 image, 1 + 5 rounds, sweep 0 + 1 (the main run has warmed
the same code paths up). About 5 minutes on 2 idle cores with 2 threads. Every count is a flag
(``--help``).

``--syncs`` counts instead the synchronisations of one training iteration (after one untimed
iteration) per model (``benchmarks/syncs.py``: which operations, and why), with ``--batch-size``
(default 2) images of ``--boxes`` (20) boxes, then for 1, 2, 4 images (``--sync-images``) and
5, 20, 100 boxes per image (``--sync-boxes``); default R-18 at 256x320 (the counts do not
depend on the widths; about a minute on the CPU). On CUDA each point is also counted with
``torch.cuda.set_sync_debug_mode``.

Outputs: ``<output>/benchmark_<device>.json`` (settings, machine, every sample, medians, ratios
to FCOS, the target checks, the sweep), ``<output>/benchmark_<device>.md`` (the tables as
printed) and the scaling plot ``docs/benchmark_scaling_<device>.png`` (``--plot``);
``--syncs``: ``<output>/syncs_<device>.{json,md}``.

Timings on a shared machine are noisy: the JSON keeps every sample and the load average before
and after the run. On a CPU shared with other processes, ``--threads 1`` avoids OpenMP threads
spinning against each other. GT boxes are random (seeded): log-uniform sizes from 8 px to the
image's short side, aspect ratios 1:3 to 3:1, inside the image, random classes.
"""
import argparse
import datetime
import gc
import logging
import os
import sys
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run as a script from a checkout: import this package as ``benchmarks`` and the project's
# packages from the repository root (not its modules from the script's folder: no name clashes).
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.models import (  # noqa: E402
    assign_loss,
    backbone_features,
    build_models,
    head_outputs,
    inference,
    make_batch,
    postprocess,
    same_backbones,
    short_side_size,
    train_step,
)
from benchmarks.report import (  # noqa: E402
    add_ratios,
    check_sync_targets,
    check_targets,
    loadavg,
    machine_info,
    main_table,
    plot_sweep,
    sweep_table,
    sync_locations_table,
    sync_ops_table,
    sync_table,
    targets_table,
    where,
    write_report,
)
from benchmarks.settings import (  # noqa: E402
    BASE_CONFIGS,
    MODEL_NAMES,
    SWEEP_BOXES,
    SWEEP_SHORT_SIDES,
    SYNC_BOXES,
    SYNC_IMAGES,
    BenchSettings,
)
from benchmarks.syncs import count_syncs  # noqa: E402
from benchmarks.timing import (  # noqa: E402
    PeakMemory,
    Sample,
    error_text,
    interleaved,
    median_or_none,
    summary,
)

__all__ = [
    "main",
    "measure_main",
    "measure_sweep",
    "measure_syncs",
    "parse_args",
    "run_benchmark",
    "run_syncs",
    "settings_from_args",
]

logger = logging.getLogger("benchmark")


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def _int_list(text: str) -> Tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "benchmarks", "results"),
                        help="folder of the JSON and markdown results")
    parser.add_argument("--plot", default=None,
                        help="scaling plot PNG (default docs/benchmark_scaling_<device>.png; "
                             "'' for none)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default=",".join(MODEL_NAMES),
                        help=f"comma-separated subset of {','.join(MODEL_NAMES)}")
    parser.add_argument("--depth", type=int, default=None, choices=(18, 34, 50, 101, 152),
                        help="ResNet depth of the shared backbone (default 50; --syncs: 18)")
    parser.add_argument("--fpn-channels", type=int, default=256,
                        help="FPN and head width (a multiple of 32 for GroupNorm)")
    parser.add_argument("--num-convs", type=int, default=4, help="convs per head tower")
    parser.add_argument("--top-block-in-feature", default="p5", choices=("p5", "res5"),
                        help="input of P6 in the shared backbone (FCOS: p5)")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default: 2 on CUDA and with --syncs, 1 on the "
                             "CPU)")
    parser.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="default 800 1333; --syncs: 256 320")
    parser.add_argument("--boxes", type=int, default=20, help="GT boxes per image")
    parser.add_argument("--score-thresh", type=float, default=0.0,
                        help="inference score threshold of all four models")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds over all models before the timed ones "
                             "(default: 2 on CUDA, 1 on the CPU)")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed rounds (A B C D each) of the train step and inference; "
                             "the median is reported (default: 10 on CUDA, 5 on the CPU)")
    parser.add_argument("--assign-iters", type=int, default=None,
                        help="timed rounds of assignment + loss and of post-processing "
                             "(default: 20 on CUDA, 5 on the CPU)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the scaling sweep")
    parser.add_argument("--sweep-only", action="store_true",
                        help="only the scaling sweep (no train / inference measurements)")
    parser.add_argument("--sweep-boxes", type=_int_list, default=SWEEP_BOXES,
                        help="GT boxes per image of the sweep (at --image-size)")
    parser.add_argument("--sweep-short-sides", type=_int_list, default=SWEEP_SHORT_SIDES,
                        help="image short sides of the sweep (long side x 1333/800)")
    parser.add_argument("--sweep-batch-size", type=int, default=None,
                        help="images per sweep batch (default 1: the figures are per image)")
    parser.add_argument("--sweep-iters", type=int, default=None,
                        help="timed rounds per sweep point (default: 10 on CUDA, 1 on the CPU)")
    parser.add_argument("--sweep-warmup", type=int, default=None,
                        help="untimed rounds per sweep point (default: 2 on CUDA, 0 on the CPU)")
    parser.add_argument("--syncs", action="store_true",
                        help="count the host-device synchronisations of a training iteration "
                             "instead of timing (benchmarks/syncs.py)")
    parser.add_argument("--sync-images", type=_int_list, default=SYNC_IMAGES,
                        help="--syncs: images per batch (at --boxes boxes per image)")
    parser.add_argument("--sync-boxes", type=_int_list, default=SYNC_BOXES,
                        help="--syncs: GT boxes per image (at --batch-size images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--pseudo-iou-config", default=BASE_CONFIGS["PseudoIoU"])
    parser.add_argument("--autoassign-config", default=BASE_CONFIGS["AutoAssign"])
    return parser.parse_args(argv)


def _default(value: Optional[Any], on_cuda: Any, on_cpu: Any, cuda: bool) -> Any:
    return value if value is not None else (on_cuda if cuda else on_cpu)


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """Validated settings; counts left unset get the defaults of the device (CUDA / CPU)."""
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; choose from {list(MODEL_NAMES)}")
    if args.fpn_channels % 32:
        raise ValueError(f"--fpn-channels must be a multiple of 32 (GroupNorm), got "
                         f"{args.fpn_channels}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available")
    if args.no_sweep and args.sweep_only:
        raise ValueError("--no-sweep and --sweep-only leave nothing to measure")
    cuda = args.device.startswith("cuda")
    syncs = args.syncs
    counts = {
        "batch_size": _default(args.batch_size, 2, 2 if syncs else 1, cuda),
        # CPU: one warm-up round (first calls were up to 2x slower) and 5 timed rounds: about
        # 5 minutes on 2 idle cores.
        "warmup": _default(args.warmup, 2, 1, cuda),
        "iters": _default(args.iters, 10, 5, cuda),
        "assign_iters": _default(args.assign_iters, 20, 5, cuda),
        "sweep_iters": _default(args.sweep_iters, 10, 1, cuda),
        # CPU: the main run has warmed up the same code paths; only the shapes differ.
        "sweep_warmup": _default(args.sweep_warmup, 2, 0, cuda),
        "sweep_batch_size": _default(args.sweep_batch_size, 1, 1, cuda),
    }
    positive = dict(counts, boxes=args.boxes, num_classes=args.num_classes)
    for name in ("batch_size", "iters", "assign_iters", "sweep_iters", "sweep_batch_size",
                 "boxes", "num_classes"):
        if positive[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {positive[name]}")
    for name in ("warmup", "sweep_warmup"):
        if counts[name] < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {counts[name]}")
    for name in ("sync_images", "sync_boxes"):
        values = getattr(args, name)
        if not values or min(values) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive integers, got "
                             f"{values}")
    return BenchSettings(
        device=args.device,
        models=models,
        depth=args.depth or (18 if syncs else 50),
        fpn_channels=args.fpn_channels,
        num_convs=args.num_convs,
        top_block_in_feature=args.top_block_in_feature,
        num_classes=args.num_classes,
        image_size=tuple(args.image_size or ((256, 320) if syncs else (800, 1333))),
        boxes=args.boxes,
        score_thresh=args.score_thresh,
        main_run=not args.sweep_only,
        sweep=not args.no_sweep,
        sweep_boxes=tuple(args.sweep_boxes),
        sweep_short_sides=tuple(args.sweep_short_sides),
        syncs=syncs,
        sync_images=tuple(args.sync_images),
        sync_boxes=tuple(args.sync_boxes),
        seed=args.seed,
        threads=args.threads,
        configs={"PseudoIoU": args.pseudo_iou_config, "AutoAssign": args.autoassign_config},
        output=args.output,
        plot=args.plot,
        **counts,
    )


# ------------------------------------------------------------------------------------------
# The runs
# ------------------------------------------------------------------------------------------
def measure_main(models: Dict[str, nn.Module], s: BenchSettings) -> Dict[str, Any]:
    """Train step, inference, assignment + loss and post-processing of every model."""
    device = torch.device(s.device)
    names = list(models)
    h, w = s.image_size
    batch = make_batch(s.batch_size, h, w, s.boxes, s.num_classes, s.seed)
    errors: Dict[str, str] = {}
    results: Dict[str, Dict[str, Any]] = {n: {"peak_mib": {}} for n in names}

    def record(key: str, samples: Dict[str, List[Sample]], part: Optional[int] = None) -> None:
        for name, v in samples.items():
            seconds = [x.seconds if part is None else x.seconds[part] for x in v]
            results[name][key] = summary(seconds)
            results[name]["peak_mib"][key] = median_or_none([x.peak_mib for x in v])

    logger.info(f"train step: {s.warmup} warm-up + {s.iters} timed rounds")
    record("train", interleaved(
        names, lambda n: train_step(models[n], batch), s.warmup, s.iters, device, errors))
    logger.info("inference")
    record("inference", interleaved(
        names, lambda n: inference(models[n], batch), s.warmup, s.iters, device, errors))

    logger.info(f"assignment + loss: {s.warmup} warm-up + {s.assign_iters} timed rounds")
    prepared = {}
    for name in names:
        if name not in errors:
            prepared[name] = head_outputs(models[name], batch)
    samples = interleaved(
        list(prepared), lambda n: assign_loss(models[n], prepared[n], device),
        s.warmup, s.assign_iters, device, errors,
    )
    record("assign_loss_fwd", samples, part=0)
    record("assign_loss", samples, part=1)
    for name in results:
        results[name]["peak_mib"].pop("assign_loss_fwd", None)  # measured with the backward
    logger.info(f"post-processing: {s.warmup} warm-up + {s.assign_iters} timed rounds")
    record("postprocess", interleaved(
        list(prepared), lambda n: postprocess(models[n], prepared[n], device),
        s.warmup, s.assign_iters, device, errors))
    prepared.clear()  # free the head outputs
    for name, err in errors.items():
        results[name] = {"error": err}
    return results


def measure_sweep(models: Dict[str, nn.Module], s: BenchSettings) -> List[Dict[str, Any]]:
    """Assignment + loss (fwd+bwd) time and peak memory per model at each sweep point."""
    device = torch.device(s.device)
    names = list(models)
    # Identical backbones (same seed) give identical features: run the backbone once per size.
    shared_backbone = same_backbones(models)
    points: List[Tuple[str, Tuple[int, int], int]] = []
    for boxes in s.sweep_boxes:
        points.append(("boxes", s.image_size, boxes))
    for short in s.sweep_short_sides:
        points.append(("size", short_side_size(short), s.boxes))
    rows: List[Dict[str, Any]] = []
    cached_size, cached, head_errors = None, {}, {}
    for kind, (h, w), boxes in points:
        logger.info(f"sweep: {h}x{w}, {boxes} boxes per image")
        batch = make_batch(s.sweep_batch_size, h, w, boxes, s.num_classes, s.seed + boxes)
        if cached_size != (h, w):  # head outputs depend on the image size only
            cached, head_errors = {}, {}
            gc.collect()
            feats = backbone_features(models[names[0]], batch) if shared_backbone else None
            for name in names:
                try:
                    cached[name] = head_outputs(models[name], batch, feats)
                except Exception as e:
                    head_errors[name] = error_text(e)
            del feats
            cached_size = (h, w)
        errors = dict(head_errors)
        prepared = {}
        for name, (images, features, predictions, _) in cached.items():
            gt = [x["instances"].to(models[name].device) for x in batch]
            prepared[name] = (images, features, predictions, gt)
        samples = interleaved(
            list(prepared), lambda n: assign_loss(models[n], prepared[n], device)[1],
            s.sweep_warmup, s.sweep_iters, device, errors,
        )
        row: Dict[str, Any] = {"kind": kind, "image_size": [h, w], "boxes_per_image": boxes,
                               "batch_size": s.sweep_batch_size, "models": {}}
        for name in names:
            if name in samples:
                entry = summary([x.seconds for x in samples[name]])
                entry["peak_mib"] = median_or_none([x.peak_mib for x in samples[name]])
                row["models"][name] = entry
            else:
                row["models"][name] = {"error": errors.get(name, "not run")}
        rows.append(row)
        prepared.clear()
    return rows


def sync_points(s: BenchSettings) -> List[Tuple[int, int]]:
    """(images, boxes per image) of the synchronisation count: ``sync_images`` at ``boxes``,
    then ``sync_boxes`` at ``batch_size`` images, without repeats."""
    points = [(n, s.boxes) for n in s.sync_images] + [(s.batch_size, b) for b in s.sync_boxes]
    return list(dict.fromkeys(points))


def measure_syncs(models: Dict[str, nn.Module], s: BenchSettings) -> List[Dict[str, Any]]:
    """The synchronisations of one training iteration (:func:`train_step`) per model and point,
    after one uncounted iteration per model."""
    device = torch.device(s.device)
    h, w = s.image_size
    rows: List[Dict[str, Any]] = []
    warm: Dict[str, bool] = {}
    for images, boxes in sync_points(s):
        logger.info(f"syncs: {images} images x {boxes} boxes")
        batch = make_batch(images, h, w, boxes, s.num_classes, s.seed)
        row: Dict[str, Any] = {"images": images, "boxes_per_image": boxes,
                               "image_size": [h, w], "models": {}}
        for name, model in models.items():
            try:
                if not warm.get(name):
                    train_step(model, batch)  # lazy initialisation, caches
                    warm[name] = True
                row["models"][name] = count_syncs(lambda: train_step(model, batch), batch, device)
            except Exception as e:
                logger.exception(f"{name} failed")
                row["models"][name] = {"error": error_text(e)}
        rows.append(row)
    return rows


def _start(s: BenchSettings, argv: Optional[Sequence[str]], device: torch.device):
    if s.threads:
        torch.set_num_threads(s.threads)
    return {
        "command": " ".join(["benchmarks/benchmark.py"] + list(argv if argv is not None
                                                              else sys.argv[1:])),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": asdict(s),
        "machine": machine_info(device),
        "loadavg_start": loadavg(),
    }


def run_syncs(s: BenchSettings, argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Build, count the synchronisations, write ``syncs_<device>.{json,md}``."""
    device = torch.device(s.device)
    started = time.time()
    report = _start(s, argv, device)
    models, build_errors = build_models(s)
    report["build_errors"] = build_errors
    rows = measure_syncs(models, s)
    for row in rows:
        row["models"].update({n: {"error": e} for n, e in build_errors.items()})
    report["syncs"] = rows
    base = (s.batch_size, s.boxes)
    report["targets"] = check_sync_targets(rows, base)
    report["wall_s"] = round(time.time() - started, 1)
    h, w = s.image_size
    at_base = next(r for r in rows if (r["images"], r["boxes_per_image"]) == base)
    text = [
        f"## Synchronisations per training iteration: R-{s.depth}-FPN, {h}x{w}, float32, "
        f"{device.type} ({where(report['machine'])})", "",
        "Operations that synchronise host and device on CUDA, counted by "
        "`benchmarks/syncs.py` in one iteration (forward + backward of the losses, train mode)"
        "; the input copies (`batched_inputs` to the device, image by image) apart.", "",
        sync_table(rows, list(s.models), base), "",
        f"### By operation, {base[0]} images x {base[1]} boxes", "",
        sync_ops_table({n: at_base["models"][n] for n in s.models if n in at_base["models"]}),
        "", f"### Where, {base[0]} images x {base[1]} boxes (the caller of each operation; "
        "for the backward, the `.backward()` call)", "",
        sync_locations_table(at_base["models"], [n for n in ("PseudoIoU", "AutoAssign")
                                                 if n in at_base["models"]]),
        "", "### Targets (counts without the input copies)", "", targets_table(report["targets"]),
        "", f"Command: `{report['command']}` ({report['wall_s']} s)",
    ]
    report["markdown"] = "\n".join(text)
    print(report["markdown"])
    path = write_report(report, s.output, f"syncs_{device.type}")
    logger.info(f"wrote {path}.json, {path}.md")
    return report


def run_benchmark(s: BenchSettings, argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Build, measure, write JSON / markdown / plot; returns the JSON document."""
    device = torch.device(s.device)
    started = time.time()
    report = _start(s, argv, device)
    report["memory_method"] = PeakMemory.method(device)
    report["fcos_head"] = ("FCOSHead(norm='') + GroupNorm(32, C) inserted after each tower "
                           "conv (v0.6 GN workaround; same layout as FCOSHead(norm='GN') on "
                           "main)")
    models, build_errors = build_models(s)
    report["build_errors"] = build_errors
    results = measure_main(models, s) if s.main_run else {n: {} for n in models}
    for name, err in build_errors.items():
        results[name] = {"error": err}
    results = {n: results[n] for n in s.models if n in results}
    add_ratios(results)
    report["results"] = results
    sweep = measure_sweep(models, s) if s.sweep and models else []
    report["sweep"] = sweep
    report["targets"] = check_targets(results, sweep, s)
    report["loadavg_end"] = loadavg()
    report["wall_s"] = round(time.time() - started, 1)

    place = where(report["machine"])
    h, w = s.image_size
    heading = (f"R-{s.depth}-FPN, {s.batch_size} x {h}x{w}, {s.boxes} GT boxes/image, "
               f"float32, {device.type} ({place}); median of {s.iters} "
               f"(interleaved, {s.warmup} warm-up); load avg {report['loadavg_start']} -> "
               f"{report['loadavg_end']}")
    text = [f"## Benchmark: {heading}", "", main_table(results), "",
            f"Peak memory: {report['memory_method']}.", ""]
    if sweep:
        text += [f"### Assignment + loss scaling (fwd+bwd, {s.sweep_batch_size} image(s), "
                 f"median of {s.sweep_iters})", "", sweep_table(sweep, list(models)), ""]
    text += ["### Targets", "", targets_table(report["targets"]), "",
             f"Command: `{report['command']}` ({report['wall_s']} s)"]
    report["markdown"] = "\n".join(text)
    print(report["markdown"])

    stem = write_report(report, s.output, f"benchmark_{device.type}")
    plot = s.plot if s.plot is not None else os.path.join(
        REPO_ROOT, "docs", f"benchmark_scaling_{device.type}.png")
    if sweep and plot:
        plot_sweep(sweep, list(models), plot,
                   f"Assignment + loss, fwd+bwd, {s.sweep_batch_size} image, median of "
                   f"{s.sweep_iters}: {place}")
        report["plot"] = plot
        write_report(report, s.output, f"benchmark_{device.type}")
    logger.info(f"wrote {stem}.json, {stem}.md" + (f", {plot}" if sweep and plot else ""))
    return report


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    settings = settings_from_args(parse_args(argv))
    return run_syncs(settings, argv) if settings.syncs else run_benchmark(settings, argv)


if __name__ == "__main__":
    main()
