"""Win and slip models for open deals: data, fitting, calibration, evaluation, reasons, MLflow.

The in-memory API (no MLflow), stable for the quarter forecast:

- :func:`fit_models` (``tables, stages, *, cutoff, progress=None, **config``) ->
  :class:`FittedModels`, whose ``score(tables, stages, as_of)`` gives one row per open deal with
  ``p_win``, ``p_won_this_quarter`` and ``expected_value``;
- :class:`FallbackScorer`: the same output from historical stage rates, for thin data.

``pipecast train|models|promote|score`` (``serving/cli/models.py``) add MLflow on top
(:mod:`training.tracking`).
"""

from training.config import TrainingConfig, make_config
from training.fitting import FittedModels, fit_models
from training.scoring import FallbackScorer

__all__ = ["FallbackScorer", "FittedModels", "TrainingConfig", "fit_models", "make_config"]
