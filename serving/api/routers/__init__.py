"""One router per resource: health, pipeline, data, deals, forecast, models and jobs."""
