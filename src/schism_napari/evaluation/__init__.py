"""Scoring: the metrics (confusion matrices, IoU; torch-light, so training, the forest's choice and
inference share them) and whole-image evaluation of a trained model against masks."""
