"""Metrics: pure functions of stacked parameters and data."""
