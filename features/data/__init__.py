"""CRM data: canonical schema, stage configuration, mappings, import and the DuckDB store."""
