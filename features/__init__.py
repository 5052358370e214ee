"""Data work: schema, stage config, CRM import, DuckDB store, point-in-time signals, generator."""
