"""What the source-side parity scripts share (they run in a throw-away environment with the
source framework, not in this project's environments): the two test images, random weights,
and saving outputs in the format of :mod:`anchor_free_app.convert.parity`."""
from typing import Callable, Dict, List

import numpy as np
import torch

__all__ = ["make_images", "randomize_", "save_capped", "REDUCED", "FULL"]

#: the reduced model of the committed fixtures: caffe-style ResNet-50 with 1/16 of the width
#: (stem 8, res2 16 ... res5 128 channels), FPN and head of 32 channels, 2 convs per tower,
#: 8 classes. ``FULL`` is the published architecture.
REDUCED = dict(stem=8, base=4, res_out=[16, 32, 64, 128], fpn=32, convs=2, classes=8)
FULL = dict(stem=64, base=64, res_out=[256, 512, 1024, 2048], fpn=256, convs=4, classes=80)


def caffe_resnet_cfg(s: Dict, **extra) -> Dict:
    """mmdetection's ``ResNet`` config of both releases (caffe style, frozen stem + stage 1,
    frozen BN) at the widths of ``s`` (:data:`REDUCED` or :data:`FULL`); ``extra`` adds keys
    (e.g. ``dcn``)."""
    return dict(
        type="ResNet",
        depth=50,
        stem_channels=s["stem"],
        base_channels=s["base"],
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type="BN", requires_grad=False),
        norm_eval=True,
        style="caffe",
        **extra,
    )


def make_images() -> List[np.ndarray]:
    """Two deterministic BGR uint8 images, 150 x 200 and 200 x 136 (not multiples of 32, so that
    padding is exercised): a smooth background with random filled rectangles."""
    rng = np.random.RandomState(0)
    images = []
    for h, w in ((150, 200), (200, 136)):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack(
            [64 + 48 * np.sin(xx / (9 + 4 * c) + yy / (13 + 3 * c) + c) for c in range(3)], -1
        )
        for _ in range(6):
            x0, y0 = rng.randint(0, w - 8), rng.randint(0, h - 8)
            x1, y1 = rng.randint(x0 + 4, w), rng.randint(y0 + 4, h)
            img[y0:y1, x0:x1] = rng.randint(0, 256, size=3)
        images.append(np.clip(img + rng.randn(h, w, 3) * 6, 0, 255).astype(np.uint8))
    return images


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int, special: Dict[str, Callable] = None) -> None:
    """
    Give every parameter and buffer of ``model`` seeded random values that keep activations in
    a normal range: He-normal conv weights, norm weights around 1, small biases, BatchNorm
    running variance in [0.75, 1.25]; ``special`` maps a key suffix to ``f(shape, generator)``
    (e.g. the classifier bias, for a spread of scores around the test threshold).
    """
    gen = torch.Generator().manual_seed(seed)
    special = special or {}
    for name, t in sorted(model.state_dict().items()):
        if not t.is_floating_point():
            continue
        for suffix, fn in special.items():
            if name.endswith(suffix):
                t.copy_(fn(t.shape, gen))
                break
        else:
            if name.endswith("running_var"):
                t.copy_(0.75 + 0.5 * torch.rand(t.shape, generator=gen))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif t.dim() == 4:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif name.endswith(".scale"):
                t.copy_(0.8 + 0.4 * torch.rand(t.shape, generator=gen))
            elif name.endswith("weight") or name.endswith("sigma"):
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=gen))
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))


def save_capped(out_dir: str, framework: str, settings: Dict, opts: List[str], detections: List[Dict]) -> None:
    """
    Write ``out_dir/capped.pth``: the source model's ``detections`` on the images of
    ``outputs.pth`` under other test settings (``settings``, as the source names them), under
    which some levels have more candidates above the threshold than the source's per-level cap;
    ``opts`` are this project's config options for the same settings (``compare.py --capped``,
    ``tests/test_convert.py``).
    """
    torch.save(
        {"framework": framework, "settings": settings, "opts": list(opts), "detections": detections},
        f"{out_dir}/capped.pth",
    )
