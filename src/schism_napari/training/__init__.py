"""Training: losses, metrics, the training loop and the run folder it writes."""
