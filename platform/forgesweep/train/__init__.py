"""Training: the Ray-free continual loop, stage checkpoints, and the Ray Train adapter."""
