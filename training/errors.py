"""Errors of model training and serving that a user can act on (all :class:`PipecastError`)."""

from __future__ import annotations

from features.errors import InputError, NotFoundError, PipecastError


class LeakageError(InputError):
    """A training column or value is known only after ``as_of`` (an outcome, a close, a label)."""


class ModelNotFoundError(NotFoundError):
    """No registered model version (or alias) by that name in the MLflow registry."""


class PromotionRefused(PipecastError):
    """A version may not become champion: it is worse than the champion, or not comparable."""


__all__ = ["LeakageError", "ModelNotFoundError", "PromotionRefused"]
