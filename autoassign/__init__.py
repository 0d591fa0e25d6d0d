"""AutoAssign (Zhu et al., 2020) for Detectron2: config adder and the registered meta-arch."""
from . import autoassign as _autoassign  # noqa: F401  (registers the AutoAssign meta-arch)
from .autoassign import AutoAssign
from .center_prior import CenterPrior
from .config import add_autoassign_config

__all__ = ["add_autoassign_config", "AutoAssign", "CenterPrior"]
