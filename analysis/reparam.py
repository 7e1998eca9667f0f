"""Which measures survive a function-preserving rescaling (Dinh et al. 2017).

Scaling one ReLU layer by alpha and the next by 1/alpha leaves the network's function
unchanged but not, in general, its Hessian: Dinh et al. ("Sharp minima can generalize for
deep nets") show that the top eigenvalue and the trace can be made as large as one likes
this way. The ``reparam`` table records each measure before and after such a rescaling
(variant_id, metric, alpha, layer_a, layer_b, before, after, ratio = after / before); a
measure with ratio 1 is invariant, one far from 1 measures the parametrisation as much as
the landscape.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TOLERANCE = 0.05  # |ratio - 1| for every variant: "invariant" (Monte-Carlo measures wobble)


def reparam_summary(
    reparam: pd.DataFrame | None, tolerance: float = TOLERANCE
) -> pd.DataFrame | None:
    """Per metric and alpha: the rescaled layers, variants, ratio mean / min / max, and
    ``invariant`` (every finite ratio within ``tolerance`` of 1). ``None`` without a table."""
    if reparam is None or reparam.empty or not {"metric", "ratio"} <= set(reparam.columns):
        return None
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    data = reparam.assign(
        ratio=pd.to_numeric(reparam["ratio"], errors="coerce").replace([np.inf, -np.inf], np.nan)
    )
    if "alpha" not in data:
        data = data.assign(alpha=np.nan)
    if {"layer_a", "layer_b"} <= set(data.columns):
        data = data.assign(layers=data["layer_a"].astype(str) + " / " + data["layer_b"].astype(str))
    else:
        data = data.assign(layers="")
    if "variant_id" not in data:
        data = data.assign(variant_id=np.arange(len(data)))
    grouped = data.groupby(["metric", "alpha"], sort=False, dropna=False)
    summary = grouped.agg(
        layers=("layers", lambda s: ", ".join(pd.unique(s))),
        variants=("variant_id", "nunique"),
        ratio_mean=("ratio", "mean"),
        ratio_min=("ratio", "min"),
        ratio_max=("ratio", "max"),
    ).reset_index()
    far = (summary[["ratio_min", "ratio_max"]] - 1).abs().max(axis=1)
    summary["invariant"] = far.le(tolerance) & summary["ratio_mean"].notna()
    return summary
