"""mlflow-migrator: move a whole MLflow tracking server, resumable, verifiable, with lineage."""

__version__ = "0.1.0"
