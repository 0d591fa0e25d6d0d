"""The application layer: what runs the detectors (config of a run, Trainer, launch,
checkpointing, input checks, the built-in dataset, visualisers). It imports the model layer
(``anchor_free``, ``pseudo_iou``, ``autoassign``); nothing there imports it."""
