"""The pipecast HTTP API (FastAPI): forecasts, deal scores, pipeline health, import, models.

No business logic lives here: handlers check who is asking, call ``features``, ``training`` and
``forecasting``, and shape the answer. ``create_app()`` builds the app; ``pipecast serve`` runs it.
"""
