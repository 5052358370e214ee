"""Data work and deal facts: no MLflow, HTTP or PyMC here.

- ``data``: canonical schema, stage configuration, mappings, CRM import, the DuckDB store;
- ``synthetic``: the generator and its truth;
- ``signals``: point in time, signals, snapshots and labels;
- ``pipeline``: metrics, hygiene rules, the review pack and their plots.
"""
