"""Box losses of both detectors, without host synchronisations."""
import torch
from torch import Tensor

__all__ = ["giou_loss"]


def giou_loss(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """
    Elementwise GIoU loss ``1 - GIoU`` of (P, 4) XYXY box pairs: fvcore's
    ``fvcore.nn.giou_loss(..., reduction="none")`` (the same operations in the same order, so
    the same values and gradients) without what synchronises host and device on CUDA: its two
    ``assert (x2 >= x1).all()`` (host reads) and the boolean-mask indexing of the intersection
    (a data-dependent size, in the forward and in the backward); the intersection is selected
    with ``torch.where`` instead. Inverted or non-finite boxes give a non-finite or wrong loss
    instead of fvcore's AssertionError (the detectors' boxes are ReLU'd distances around a
    point, never inverted; a diverged prediction shows as a NaN loss).

    Args:
        boxes1, boxes2: (P, 4) XYXY.
        eps: added to the union and the enclosing area.
    Returns:
        (P,) losses.
    """
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1 = torch.max(x1, x1g)
    ykis1 = torch.max(y1, y1g)
    xkis2 = torch.min(x2, x2g)
    ykis2 = torch.min(y2, y2g)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsctk = torch.where(mask, (xkis2 - xkis1) * (ykis2 - ykis1), torch.zeros_like(x1))
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
    iouk = intsctk / (unionk + eps)
    xc1 = torch.min(x1, x1g)
    yc1 = torch.min(y1, y1g)
    xc2 = torch.max(x2, x2g)
    yc2 = torch.max(y2, y2g)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    miouk = iouk - ((area_c - unionk) / (area_c + eps))
    return 1 - miouk
