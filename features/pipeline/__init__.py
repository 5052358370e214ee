"""Pipeline health as of a date: metrics, hygiene rules, the weekly review pack, their plots."""
