"""The sweep: search spaces, the Tune trial that wraps a TorchTrainer, MLflow logging of trials."""
