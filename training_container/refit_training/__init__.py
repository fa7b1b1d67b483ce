"""refit's training and hosting container: `train` and `serve` follow SageMaker's /opt/ml contract."""
