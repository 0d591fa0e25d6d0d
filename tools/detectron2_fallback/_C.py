"""Placeholder for ``detectron2._C`` in the no-compiled-ops Detectron2 v0.6 install.

The PyPI sdist ``pb1-detectron2==0.6`` lacks ``detectron2/layers/csrc``, so Detectron2's compiled
operators (deformable convolution, rotated boxes, ROIAlignRotated, the fast COCO evaluator) do not
exist. Detectron2 imports this module at import time; any use of a compiled operator raises an
ImportError that names it. ``collect_env_info`` (called by ``default_setup``) only asks the three
version helpers below, which answer without failing.
"""

FALLBACK_BUILD = True  # lets callers (e.g. the DCN config check) detect this install route


def get_compiler_version() -> str:
    return "not built (pb1-detectron2 fallback, no compiled ops)"


def get_cuda_version() -> str:
    return "not built (pb1-detectron2 fallback, no compiled ops)"


def has_cuda() -> bool:
    return False


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(
        f"detectron2._C.{name} is a compiled Detectron2 operator, but this Detectron2 was installed "
        "from the pb1-detectron2==0.6 sdist without its C++/CUDA extension. Install official "
        "Detectron2 with compiled ops (see README.md, 'Set-up') to use it."
    )
