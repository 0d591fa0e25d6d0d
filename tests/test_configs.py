"""Every config file in configs/ loads onto the project config and builds its model on CPU."""
import glob
import os

import pytest
import torch

from anchor_free.backbone import compiled_ops_available
from anchor_free_app.config import setup_cfg
from detectron2.modeling import build_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True))


def test_config_tree_is_complete():
    names = {os.path.relpath(p, os.path.join(REPO_ROOT, "configs")) for p in CONFIGS}
    assert {"Base-PseudoIoU.yaml", "Base-AutoAssign.yaml"} <= names
    assert any(n.startswith("PseudoIoU/") for n in names)
    assert any(n.startswith("AutoAssign/") for n in names)
    assert any(n.startswith("demo/") for n in names)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_config_builds(path):
    cfg = setup_cfg(path, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"], freeze=False)
    if cfg.DATASETS.TRAIN and cfg.DATASETS.TRAIN[0].startswith("demo_shapes"):
        assert cfg.DATASETS.TEST[0].startswith("demo_shapes")
    needs_dcn = any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE)
    if needs_dcn and not compiled_ops_available():
        # fails when the model is built, with the reason, never at the first forward
        with pytest.raises(RuntimeError, match="deformable convolution.*compiled"):
            build_model(cfg)
        return
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert all(p.device == torch.device("cpu") for p in model.parameters())
