"""The key layout (names and shapes) of the Pseudo-IoU R-101-DCN release's backbone, from
mmdetection 2.11's ``ResNet`` with ``dcn=dict(type='DCNv2', deform_groups=4,
fallback_on_stride=False), stage_with_dcn=(False, True, True, True)`` (the release's
``piou_r101_dcn_caffe_fpn_gn-head_2x_coco.py``), narrowed like the other fixtures and at depth 50
(the deformable layers of R-101 are the same per block). Deformable convolution has no CPU
kernel, so this model cannot run here: the test checks the conversion by names and shapes
(tests/fixtures/convert/mmdet2_dcn_keys.json)::

    /tmp/venv_mm2/bin/python tools/parity/mmdet2_dcn_keys.py --out tests/fixtures/convert/mmdet2_dcn_keys.json
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmcv_ext_stub  # noqa: E402

mmcv_ext_stub.install()

from common import REDUCED, caffe_resnet_cfg  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from mmdet.models import build_backbone

    s = REDUCED
    backbone = build_backbone(
        caffe_resnet_cfg(
            s,
            dcn=dict(type="DCNv2", deform_groups=4, fallback_on_stride=False),
            stage_with_dcn=(False, True, True, True),
        )
    )
    keys = {f"backbone.{k}": list(v.shape) for k, v in backbone.state_dict().items()}
    with open(args.out, "w") as f:
        json.dump(keys, f, indent=0, sort_keys=True)
    print(len(keys), "keys;", sum("conv_offset" in k for k in keys), "offset tensors")


if __name__ == "__main__":
    main()
