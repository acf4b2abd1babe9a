"""forgesweep: continual face-forgery detection sweeps on Ray Train, Ray Tune, MLflow and Ray Serve."""

__version__ = "0.1.0"
