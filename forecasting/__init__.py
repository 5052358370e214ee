"""Monte Carlo simulator, rule-based forecasts, backtests (later issues)."""
