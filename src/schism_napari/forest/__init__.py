"""The random forest on multiscale filter features: the instant preview and the yardstick
(``classifier``), the held-out choice between it and the network (``selection``), and stage 1 of a
two-stage model (``stages``). Torch-free."""
