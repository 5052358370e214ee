"""Win-probability and slip models, PyMC models, evaluation, MLflow tracking (later issues)."""
