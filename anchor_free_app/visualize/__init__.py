"""Commands that draw each detector's label assignment: ``python -m
anchor_free_app.visualize.pseudo_iou`` and ``python -m anchor_free_app.visualize.autoassign``."""
