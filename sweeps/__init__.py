"""Sweep specs, the Tune driver, MLflow tracking and the `rewarm` CLI."""
