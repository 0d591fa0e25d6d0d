#!/usr/bin/env python
"""Convert a published Pseudo-IoU / AutoAssign checkpoint (the Pseudo-IoU authors' mmdetection
2.11 models, mmdetection 3.x's AutoAssign, the AutoAssign authors' cvpods model) to a
Detectron2 checkpoint of this project: ``python tools/convert_checkpoint.py --help``.
The code is :mod:`anchor_free_app.convert`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from anchor_free_app.convert.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
