"""Analysis of a sweep's results directory: pandas over Parquet, nothing else.

This layer reads the Parquet tables and the manifest that the sweep driver writes and
never imports torch, ray, hydra or the ``landscape``/``sweeps`` packages, so a results
directory can be analysed on any machine with pandas.

Modules: :mod:`analysis.load` (tables), :mod:`analysis.cells` (aggregation to cells),
:mod:`analysis.phases` (phase classifier), :mod:`analysis.heatmap`, :mod:`analysis.figures`
(plots), :mod:`analysis.correlations` (Kendall tau), :mod:`analysis.report` (the
``landscape-report`` command). Measurements during training: :mod:`analysis.training`
(metrics and sharpness against step), :mod:`analysis.stiffness`, :mod:`analysis.pca_path`,
:mod:`analysis.lca`, :mod:`analysis.weights`, :mod:`analysis.reparam`.
"""
