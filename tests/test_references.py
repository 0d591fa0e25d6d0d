"""Every reference in the project resolves: no tracked file cites a document outside the
repository: the notes folder beside the checkout, the two notes files in it, or numbered items
of those notes (the word for them followed by an item number such as A4, a section sign, or
"Part B"). Papers, the authors' released code, Detectron2 and ``docs/`` are cited instead.

The one exception is ``.ci/run``, which hands CI's set-up the Detectron2 source archive that
lies beside the clone. The forbidden strings are assembled from pieces so that this file does not
contain them itself (it is scanned like every other file).
"""
import pathlib
import re
import subprocess
from typing import Iterable, List

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Files allowed to name the folder beside the checkout (and only that).
OUTSIDE_FOLDER_ALLOWED = {".ci/run"}
_SHARED = "shared"
_S = "sp" + "ec"
OUTSIDE_FOLDER = re.compile(re.escape("../" + _SHARED) + "|" + re.escape(_SHARED + "/spec"))
SPEC_FILES = re.compile(r"\b(?:algorithms|detectron2)\." + "md" + r"\b", re.IGNORECASE)
# The word followed by an item (A4, B3-B8, a section sign, "Part B", "row 11"), in parentheses
# on its own, or after "the" / "this" / "our". ShapeSpec, autospec, timespec,
# spec_from_file_location, module.__spec__, spec.loader and "specifiers" are word-internal or
# followed by something else, so they never match (tests below).
SPEC_CITATION = re.compile(
    r"(?<![\w.])" + _S + r"s?\b(?![._(])"
    r"\s*[:(`'\"]*\s*(?:[A-C]\d{1,2}\b|§|part\s+[A-C]\b|row\s+\d)"
    r"|(?<!\w)\(\s*" + _S + r"s?\s*\)"
    r"|\b(?:the|this|our|project's)\s+" + _S + r"\b(?![\w.])",
    re.IGNORECASE,
)
MAX_BYTES = 2_000_000


def tracked_files() -> List[str]:
    """Paths (relative, POSIX) of the files git tracks; without git, every file outside hidden
    folders, virtual environments, ``datasets/`` and ``output/``."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout
        return [p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        skip = {"datasets", "output"}
        return [
            p.relative_to(ROOT).as_posix()
            for p in ROOT.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") or part in skip for part in p.relative_to(ROOT).parts)
        ]


def violations(root: pathlib.Path, paths: Iterable[str]) -> List[str]:
    """``path:line: text`` for every line that cites a document outside the repository."""
    found = []
    for rel in paths:
        path = root / rel
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            continue
        data = path.read_bytes()
        if b"\0" in data:  # binary (images)
            continue
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            bad = SPEC_FILES.search(line) or SPEC_CITATION.search(line)
            if not bad and rel not in OUTSIDE_FOLDER_ALLOWED:
                bad = OUTSIDE_FOLDER.search(line)
            if bad:
                found.append(f"{rel}:{number}: {line.strip()}")
    return found


def test_no_tracked_file_cites_a_document_outside_the_repository():
    paths = tracked_files()
    assert len(paths) > 10
    bad = violations(ROOT, paths)
    assert not bad, (
        "cite the paper, the authors' released code, Detectron2 or docs/ instead:\n"
        + "\n".join(bad)
    )


@pytest.mark.parametrize(
    "line",
    [
        f"# P6 from C5 ({_S} B1)",
        f"values from {_S} A4.",
        f'"""{_S.title()} A9, from the init"""',
        f"the sparse form of {_S} B14",
        f"({_S} B3-B8 literally)",
        f"rejects CPU modules ({_S} detectron2." + "md §5)",
        f"see {_S} §3 row 11",
        f"see {_S} row 11",
        f"the {_S.upper()} (tests below)",
        f"a dense reference written from the {_S} (tests below)",
        f"checked against it ({_S})",
        f"The released code ({_S}: `../{_SHARED}/{_S}s/algorithms." + "md` Part A)",
        f"{_S} Part B adds",
        "as documented in algorithms." + "md",
        "see detectron2." + "md",
        "tar -xzf ../" + _SHARED + "/vendor/detectron2.tar.gz",
        f"cat {_SHARED}/{_S}s/notes.txt",
    ],
)
def test_planted_citation_is_found(tmp_path, line):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "module.py").write_text(f"x = 1\n{line}\n")
    assert violations(tmp_path, ["pkg/module.py"]) == [f"pkg/module.py:2: {line.strip()}"]


@pytest.mark.parametrize(
    "line",
    [
        "from detectron2.layers import ShapeSpec",
        "input_shape=ShapeSpec(channels=3)  # ShapeSpec",
        "with mock.patch.object(m, 'f', autospec=True):",
        "datetime.now().isoformat(timespec='seconds')",
        "spec = importlib.util.spec_from_file_location(name, path)",
        "spec.loader.exec_module(module)",
        "module = importlib.util.module_from_spec(spec)",
        "loader.exec_module(spec)  # call(spec) and f( spec )",
        "module.__spec__ is None",
        "# its setup.py install_requires, same specifiers",
        "paper §4.1: 24 epochs; Table 3 row 5; Eq. 6; Algorithm 1",
        "unspecified on CUDA in the release",
        "(mmdet extra_convs_on_inputs=False) in piou_head.py",
        "see docs/design.md and projects/AutoAssign/README.md",
        f"re{_S} B1 and in{_S}t A4",
    ],
)
def test_ordinary_text_is_not_flagged(tmp_path, line):
    (tmp_path / "module.py").write_text(line + "\n")
    assert violations(tmp_path, ["module.py"]) == []


def test_only_ci_run_may_name_the_folder_beside_the_checkout(tmp_path):
    line = 'D2_ARCHIVE="$(cd .. && pwd)/' + _SHARED + '/vendor/d2.tar.gz"  # ../' + _SHARED
    for rel in (".ci/run", "tools/setup_env.sh"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(line + "\n")
    assert violations(tmp_path, [".ci/run", "tools/setup_env.sh"]) == [
        f"tools/setup_env.sh:1: {line}"
    ]


def test_binary_and_missing_files_are_skipped(tmp_path):
    (tmp_path / "image.png").write_bytes(f"\x89PNG\0\0 {_S} A4 ../{_SHARED}".encode())
    assert violations(tmp_path, ["image.png", "deleted.py"]) == []
