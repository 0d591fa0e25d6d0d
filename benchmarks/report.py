"""
How results are reported: ratios to FCOS, the targets, the markdown tables, the scaling plot,
the machine description and the JSON / markdown files.
"""
import contextlib
import json
import logging
import os
import platform
import re
import subprocess
from typing import Any, Dict, List, Optional, Sequence

import torch

from .settings import REFERENCE_MODEL, REPO_ROOT, TIMED_KEYS, BenchSettings
from .syncs import KINDS

__all__ = [
    "add_ratios",
    "check_sync_targets",
    "check_targets",
    "loadavg",
    "machine_info",
    "main_table",
    "plot_sweep",
    "sweep_table",
    "sync_locations_table",
    "sync_ops_table",
    "sync_table",
    "targets_table",
    "where",
    "write_report",
]

logger = logging.getLogger("benchmark")


# ------------------------------------------------------------------------------------------
# Derived figures
# ------------------------------------------------------------------------------------------
def add_ratios(results: Dict[str, Dict[str, Any]]) -> None:
    """``ratio_to_fcos`` per measurement, and assign+loss as a share of the train step."""
    ref = results.get(REFERENCE_MODEL, {})
    for name, res in results.items():
        if "error" in res:
            continue
        ratios = {}
        for key in TIMED_KEYS:
            if key in res and key in ref:
                ratios[key] = res[key]["median_ms"] / ref[key]["median_ms"]
        for key, value in (res.get("peak_mib") or {}).items():
            ref_value = (ref.get("peak_mib") or {}).get(key)
            if value is not None and ref_value:
                ratios[f"peak_mib_{key}"] = value / ref_value
        res["ratio_to_fcos"] = ratios
        # Interleaved rounds: round i of a model ran right after round i of the others, so the
        # per-round ratios show how far load drifts move a ratio.
        res["round_ratios_to_fcos"] = {
            key: [a / b for a, b in zip(res[key]["samples_ms"], ref[key]["samples_ms"])]
            for key in TIMED_KEYS
            if key in res and key in ref
            and len(res[key]["samples_ms"]) == len(ref[key]["samples_ms"]) > 1
        }
        if "train" in res and "assign_loss" in res:
            res["assign_loss_share_of_train"] = (
                res["assign_loss"]["median_ms"] / res["train"]["median_ms"]
            )


def check_targets(
    results: Dict[str, Dict[str, Any]], sweep: List[Dict[str, Any]], s: BenchSettings
) -> List[Dict[str, Any]]:
    """
    The performance targets, each {"target", "value", "holds"} (holds None: not measured):
    train step and inference against FCOS, assignment + loss at 100 GT boxes under 5% of the
    train step, 1000 GT boxes per image without running out of memory.
    """
    checks: List[Dict[str, Any]] = []

    def ratio(model: str, key: str) -> Optional[float]:
        return results.get(model, {}).get("ratio_to_fcos", {}).get(key)

    for model, key, limit, what in (
        ("PseudoIoU", "train", 1.00, "train step"),
        ("AutoAssign", "train", 1.05, "train step"),
        ("PseudoIoU", "inference", 1.00, "inference"),
        ("AutoAssign", "inference", 1.00, "inference"),
    ):
        value = ratio(model, key)
        rounds = results.get(model, {}).get("round_ratios_to_fcos", {}).get(key, [])
        text = None if value is None else f"{value:.3f}x"
        if value is not None and rounds:
            text += f" (rounds {min(rounds):.2f}-{max(rounds):.2f}x)"
        check = {"target": f"{model} {what} <= {limit:.2f}x FCOS", "value": text,
                 "holds": None if value is None else value <= limit}
        if check["holds"] is False and rounds and min(rounds) <= limit:
            check["resolved"] = False  # the median misses, but some rounds met the target
        checks.append(check)
    at_100 = [r for r in sweep if r["kind"] == "boxes" and r["boxes_per_image"] == 100]
    for model in ("PseudoIoU", "AutoAssign"):
        train = results.get(model, {}).get("train")
        entry = at_100[0]["models"].get(model, {}) if at_100 else {}
        if train is None or "median_ms" not in entry:
            share = None
        else:  # per image: the sweep and the main run may use different batch sizes
            share = (entry["median_ms"] / s.sweep_batch_size) / (
                train["median_ms"] / s.batch_size)
        checks.append({"target": f"{model} assignment + loss at 100 GT < 5% of the train step",
                       "value": None if share is None else f"{100 * share:.2f}%",
                       "holds": None if share is None else share < 0.05})
    at_1000 = [r for r in sweep if r["kind"] == "boxes" and r["boxes_per_image"] == 1000]
    for model in ("PseudoIoU", "AutoAssign"):
        entry = at_1000[0]["models"].get(model) if at_1000 else None
        if entry is None:
            value, holds = None, None
        elif "median_ms" in entry and "error" not in entry:
            mem = entry.get("peak_mib")
            value = "ran" + ("" if mem is None else f", peak {mem:.0f} MiB")
            holds = True
        else:
            value, holds = entry.get("error", "failed"), False
        h, w = s.image_size
        checks.append({"target": f"{model} 1000 GT boxes per {h}x{w} image without OOM",
                       "value": value, "holds": holds})
    return checks


def check_sync_targets(
    rows: List[Dict[str, Any]], base: Sequence[int]
) -> List[Dict[str, Any]]:
    """
    The synchronisation targets, each {"target", "value", "holds"}, on the counts without the
    input copies: Pseudo-IoU's and AutoAssign's at ``base`` = (images, boxes per image) at most
    FCOS's, and the same at every point (no synchronisation per image or per box).
    """
    checks: List[Dict[str, Any]] = []
    at_base = next((r for r in rows if (r["images"], r["boxes_per_image"]) == tuple(base)), None)

    def count(row: Optional[Dict[str, Any]], model: str) -> Optional[int]:
        return ((row or {}).get("models", {}).get(model) or {}).get("without_inputs")

    fcos = count(at_base, REFERENCE_MODEL)
    for model in ("PseudoIoU", "AutoAssign"):
        value = count(at_base, model)
        checks.append({
            "target": f"{model} syncs per iteration <= FCOS's ({base[0]} img x {base[1]} boxes)",
            "value": None if value is None or fcos is None else f"{value} (FCOS {fcos})",
            "holds": None if value is None or fcos is None else value <= fcos})
        values = [count(r, model) for r in rows]
        known = [v for v in values if v is not None]
        checks.append({
            "target": f"{model} syncs constant in images and boxes",
            "value": " / ".join("-" if v is None else str(v) for v in values) or None,
            "holds": None if len(known) < 2 else len(set(known)) == 1})
    return checks


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------
def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(res: Dict[str, Any], key: str) -> str:
    value = res.get("ratio_to_fcos", {}).get(key)
    return "" if value is None else f" ({value:.2f}x)"


def main_table(results: Dict[str, Dict[str, Any]]) -> str:
    header = ("| model | train step ms | inference ms | post-process ms | assign+loss ms fwd | "
              "assign+loss ms fwd+bwd | share of train step | peak MiB train | "
              "peak MiB inference | peak MiB assign+loss |")
    lines = [header, "|" + "---|" * 10]
    for name, res in results.items():
        if "error" in res:
            lines.append(f"| {name} | {res['error']} |" + " |" * 8)
            continue
        mem = res.get("peak_mib") or {}

        def t(key):
            return _fmt(res.get(key, {}).get("median_ms")) + _ratio(res, key)

        def m(key):
            return _fmt(mem.get(key), 0) + _ratio(res, f"peak_mib_{key}")

        share = res.get("assign_loss_share_of_train")
        lines.append(
            f"| {name} | {t('train')} | {t('inference')} | {t('postprocess')} | "
            f"{t('assign_loss_fwd')} | "
            f"{t('assign_loss')} | {_fmt(None if share is None else 100 * share)}% | "
            f"{m('train')} | {m('inference')} | {m('assign_loss')} |"
        )
    return "\n".join(lines)


def sweep_table(sweep: List[Dict[str, Any]], names: List[str]) -> str:
    header = "| image | GT/image | " + " | ".join(f"{n} ms / MiB" for n in names) + " |"
    lines = [header, "|" + "---|" * (2 + len(names))]
    for row in sweep:
        h, w = row["image_size"]
        cells = []
        for name in names:
            entry = row["models"].get(name, {})
            if "median_ms" in entry:
                cell = f"{entry['median_ms']:.1f} / {_fmt(entry.get('peak_mib'), 0)}"
                if "error" in entry:
                    cell += f" ({entry['error']})"
            else:
                cell = entry.get("error", "-")
            cells.append(cell)
        lines.append(f"| {h}x{w} | {row['boxes_per_image']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(checks: List[Dict[str, Any]]) -> str:
    lines = ["| target | measured | holds |", "|---|---|---|"]
    for c in checks:
        holds = {True: "yes", False: "NO", None: "not measured"}[c["holds"]]
        if c.get("resolved") is False:
            holds = "not resolved: the median misses, some interleaved rounds meet it"
        lines.append(f"| {c['target']} | {c['value'] or '-'} | {holds} |")
    return "\n".join(lines)


def _sync_cell(entry: Dict[str, Any]) -> str:
    if "error" in entry:
        return entry["error"]
    text = str(entry["without_inputs"])
    if "cuda_debug_mode" in entry:
        text += f" (CUDA {entry['cuda_debug_mode']['total']})"
    return text


def sync_table(points: List[Dict[str, Any]], names: List[str], base: Sequence[int]) -> str:
    """
    Synchronisations per training iteration: one row per model; the columns are the sync
    count without the input copies at each (images, boxes per image) point, then the input
    copies at ``base`` = (images, boxes). A CUDA run adds the ``set_sync_debug_mode`` count
    (which includes the input copies) in brackets.
    """
    header = ("| model | " + " | ".join(
        f"{p['images']} img x {p['boxes_per_image']} boxes" for p in points)
        + f" | input copies ({base[0]} img x {base[1]} boxes) |")
    lines = [header, "|" + "---|" * (2 + len(points))]
    base_point = next((p for p in points
                       if (p["images"], p["boxes_per_image"]) == tuple(base)), None)
    for name in names:
        cells = [_sync_cell(p["models"].get(name, {"error": "not run"})) for p in points]
        entry = (base_point or {}).get("models", {}).get(name, {})
        inputs = entry.get("by_kind", {}).get("input_to_device")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(inputs, 0)} |")
    return "\n".join(lines)


def sync_ops_table(entries: Dict[str, Dict[str, Any]]) -> str:
    """The counts of one point by kind and op (rows) and model (columns)."""
    names = [n for n, e in entries.items() if "by_op" in e]
    rows = []
    for kind in KINDS:
        ops = sorted({op for n in names for op in entries[n]["by_op"].get(kind, {})})
        rows += [(kind, op) for op in ops]
    lines = ["| kind | op | " + " | ".join(names) + " |", "|" + "---|" * (2 + len(names))]
    for kind, op in rows:
        cells = [str(entries[n]["by_op"].get(kind, {}).get(op, 0)) for n in names]
        lines.append(f"| {kind} | `{op}` | " + " | ".join(cells) + " |")
    lines.append("| total | | " + " | ".join(str(entries[n]["total"]) for n in names) + " |")
    return "\n".join(lines)


def sync_locations_table(
    entries: Dict[str, Dict[str, Any]], names: Sequence[str], top: int = 12
) -> str:
    """The ``top`` source lines with the most synchronisations of each of ``names`` (the
    input copies left out)."""
    lines = ["| model | where | syncs |", "|---|---|---|"]
    for name in names:
        locations = list((entries.get(name) or {}).get("by_location", {}).items())
        for where_, n in locations[:top]:
            lines.append(f"| {name} | `{where_}` | {n} |")
        rest = sum(n for _, n in locations[top:])
        if rest:
            lines.append(f"| {name} | {len(locations) - top} other lines | {rest} |")
    return "\n".join(lines)


def plot_sweep(sweep: List[Dict[str, Any]], names: List[str], path: str, title: str) -> None:
    """Assignment + loss time and peak memory against boxes per image and image size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, kind in enumerate(("boxes", "size")):
        rows = [r for r in sweep if r["kind"] == kind]
        if not rows:
            continue
        for name in names:
            xs, ts, ms = [], [], []
            for r in rows:
                entry = r["models"].get(name, {})
                if "median_ms" not in entry:
                    continue
                xs.append(r["boxes_per_image"] if kind == "boxes" else min(r["image_size"]))
                ts.append(entry["median_ms"])
                ms.append(entry.get("peak_mib") or float("nan"))
            if xs:
                axes[0][col].plot(xs, ts, marker="o", label=name)
                axes[1][col].plot(xs, ms, marker="o", label=name)
        h, w = rows[0]["image_size"]
        xlabel = (f"GT boxes per image ({h}x{w})" if kind == "boxes"
                  else f"image short side ({rows[0]['boxes_per_image']} GT boxes per image)")
        for row_idx, ylabel in enumerate(("assign + loss fwd+bwd (ms)", "peak memory (MiB)")):
            ax = axes[row_idx][col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            if kind == "boxes":
                ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# Machine and files
# ------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> Dict[str, Any]:
    import detectron2

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
            cpu = match.group(1) if match else cpu
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "device": str(device),
    }
    with contextlib.suppress(OSError):
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / (1 << 20), 1)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(
            torch.cuda.get_device_properties(device).total_memory / (1 << 30), 1)
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
            text=True, check=True).stdout.strip()
    return info


def where(machine: Dict[str, Any]) -> str:
    """The GPU's name, or the CPU with its cores and threads."""
    threads = machine["torch_threads"]
    return machine.get("gpu") or (f"{machine['cpu']}, {machine['cpu_count']} cores, {threads} "
                                  f"thread{'s' if threads > 1 else ''}")


def loadavg() -> Optional[str]:
    with contextlib.suppress(OSError):
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    return None


def write_report(report: Dict[str, Any], output: str, stem: str) -> str:
    """Write ``<output>/<stem>.json`` and ``.md`` (``report["markdown"]``); returns the path
    without extension."""
    os.makedirs(output, exist_ok=True)
    path = os.path.join(output, stem)
    with open(path + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(path + ".md", "w") as f:
        f.write(report["markdown"] + "\n")
    return path
