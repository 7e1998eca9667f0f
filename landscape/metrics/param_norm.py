"""Parameter norm: the L2 norm of each member's trainable parameters.

Neyshabur, Bhojanapalli, McAllester & Srebro (2017), "Exploring Generalization in Deep
Learning" (NeurIPS), and Jiang, Neyshabur, Mobahi, Krishnan & Bengio (2020), "Fantastic
Generalization Measures and Where to Find Them" (ICLR), report the parameter norm beside
sharpness: a sharpness value means little without the scale of the weights it was measured at,
and batch size and weight decay change that scale (Li et al. 2018, section 4). Here
``||w||_2`` over every trainable tensor (weights, biases, BatchNorm affine scale and shift),
never the buffers, accumulated in float64, exactly as ``l2_distance`` measures distances (and
``dist_to_init`` the distance from the initialisation). No sample and no randomness: the
metric is a function of the checkpoint alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from landscape.metrics.distance import l2_norm
from landscape.metrics.registry import Column, Metric, register

if TYPE_CHECKING:
    from landscape.metrics.local import Measurer


@dataclass(frozen=True)
class ParamNormSpec:
    """The L2 norm of the trainable parameters, one ``param_norm`` value per member."""

    enabled: bool = False


def _param_norm(
    m: Measurer, s: ParamNormSpec, sample_g: torch.Generator, probe_g: torch.Generator
) -> None:
    m.column("param_norm", l2_norm(m.stack.params))


COLUMNS = (Column("param_norm", "L2 norm of the trainable parameters"),)
register(
    Metric(
        name="param_norm",
        spec=ParamNormSpec,
        family="local",
        order=7,
        columns=lambda s: COLUMNS,
        measure=_param_norm,
    )
)
