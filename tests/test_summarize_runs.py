"""tools/summarize_runs.py: final AP and mean training statistics of runs, mean ± std over seeds."""
import json
import os

from common import REPO_ROOT, run


def _write_run(folder, ap, num_pos):
    os.makedirs(folder)
    records = [
        {"iteration": 19, "pseudo_iou/num_pos_per_image": num_pos[0], "total_loss": 1.0},
        {"iteration": 39, "pseudo_iou/num_pos_per_image": num_pos[1], "total_loss": 0.5},
        {"iteration": 39, **{f"bbox/{k}": ap + i for i, k in enumerate(["AP", "AP50", "AP75", "APs", "APm"])}},
    ]
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in records) + "\n")


def test_table_rows_and_seed_mean(tmp_path):
    _write_run(tmp_path / "piou_s1", 10.0, (20.0, 30.0))
    _write_run(tmp_path / "piou_s2", 14.0, (10.0, 10.0))
    _write_run(tmp_path / "base_s1", 7.0, (1.0, 1.0))
    out = run([os.path.join(REPO_ROOT, "tools", "summarize_runs.py"),
               str(tmp_path / "piou_s1"), str(tmp_path / "piou_s2"), str(tmp_path / "base_s1"),
               "--stats", "pseudo_iou/num_pos_per_image"])  # fmt: skip
    lines = out.strip().splitlines()
    assert lines[0] == "| run | AP | AP50 | AP75 | APs | APm | pseudo_iou/num_pos_per_image |"
    assert lines[2] == "| piou_s1 | 10.00 | 11.00 | 12.00 | 13.00 | 14.00 | 25.00 |"
    assert lines[3] == "| piou_s2 | 14.00 | 15.00 | 16.00 | 17.00 | 18.00 | 10.00 |"
    # mean of 10 and 14 = 12, sample std = 2.83; a single-seed group gets no mean row
    assert lines[5].startswith("| piou: mean ± std of 2 | 12.00 ± 2.83 | 13.00 ± 2.83 |")
    assert lines[5].endswith("| 17.50 ± 10.61 |")
    assert len(lines) == 6


def test_unfinished_run_is_named_in_the_error(tmp_path):
    folder = tmp_path / "crashed_s1"
    os.makedirs(folder)
    (folder / "metrics.json").write_text('{"iteration": 19, "total_loss": 1.0}\n')
    code, out = run([os.path.join(REPO_ROOT, "tools", "summarize_runs.py"), str(folder)], check=False)
    assert code == 1
    assert "crashed_s1/metrics.json: no evaluation" in out


def test_corrupt_metrics_line_is_named(tmp_path):
    folder = tmp_path / "bad_s1"
    os.makedirs(folder)
    (folder / "metrics.json").write_text("{not json\n")
    code, out = run([os.path.join(REPO_ROOT, "tools", "summarize_runs.py"), str(folder)], check=False)
    assert code == 1 and "bad_s1/metrics.json:1: not a JSON line" in out
