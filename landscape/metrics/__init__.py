"""Metrics: pure functions of stacked parameters and data, one module per metric, each
registering its settings and columns (``landscape.metrics.registry``)."""
