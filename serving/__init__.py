"""Command-line interface and (later) the FastAPI app."""
