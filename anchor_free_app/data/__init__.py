from .demo_shapes import (
    DEMO_SHAPES_CLASSES,
    generate_demo_shapes,
    register_demo_shapes,
    register_demo_shapes_from_cfg,
)

__all__ = [
    "DEMO_SHAPES_CLASSES",
    "generate_demo_shapes",
    "register_demo_shapes",
    "register_demo_shapes_from_cfg",
]
