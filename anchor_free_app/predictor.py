"""Inference on single images with a model of either config system: Detectron2's
``DefaultPredictor`` (which takes yacs configs only, Detectron2 issues #3416 and #5176), written
once for both, on :class:`~anchor_free_app.config.RunSettings`."""
import numpy as np
import torch
from torch import Tensor

from detectron2.data import transforms as T

from .checkpoint import SafeDetectionCheckpointer
from .config import AnyConfig, build_model_from_config, run_settings

__all__ = ["Predictor", "preprocess_image"]


def preprocess_image(cfg: AnyConfig, image: np.ndarray) -> Tensor:
    """
    What ``DefaultPredictor`` does before the model: the config's test resize
    (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, or ``dataloader.test``'s
    ``ResizeShortestEdge``), then HWC uint8 -> (C, H, W) float32.

    Args:
        image: (H, W, C) in the config's input format (``INPUT.FORMAT``,
            ``dataloader.train.mapper.image_format``).
    """
    settings = run_settings(cfg)
    if settings.test_min_size > 0:
        aug = T.ResizeShortestEdge(
            [settings.test_min_size, settings.test_min_size], settings.test_max_size
        )
        image = aug.get_transform(image).apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1)))


class Predictor:
    """
    The config's model with its weights (``MODEL.WEIGHTS`` / ``train.init_checkpoint``, loaded
    strictly: a checkpoint of another architecture is an error), in eval mode on its device;
    ``predictor(image)`` takes one (H, W, C) BGR uint8 image, as ``DefaultPredictor``, and returns
    the model's output for it (``{"instances": Instances}`` in the image's coordinates).
    """

    def __init__(self, cfg: AnyConfig):
        settings = run_settings(cfg)
        if not settings.weights:
            key = "MODEL.WEIGHTS" if settings.config_system == "yacs" else "train.init_checkpoint"
            raise ValueError(f"{key} is empty: the predictor needs a trained model")
        self.cfg = cfg
        self.input_format = settings.input_format
        self.model = build_model_from_config(cfg).eval()
        SafeDetectionCheckpointer(self.model, strict=True).load(settings.weights)

    def __call__(self, original_image: np.ndarray) -> dict:
        if self.input_format == "RGB":  # the model expects RGB (read_image gives BGR here)
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = preprocess_image(self.cfg, original_image)
        with torch.no_grad():
            return self.model([{"image": image, "height": height, "width": width}])[0]
