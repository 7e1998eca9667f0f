"""Centered kernel alignment (CKA) between the representations of two models on the same inputs.

Kornblith, Norouzi, Lee, Hinton (2019), "Similarity of Neural Network Representations
Revisited" (ICML): for representations X (n, p) and Y (n, q) of the same n inputs, with
Gram matrices K, L and the centring matrix H = I - 11'/n,

    HSIC(K, L) = tr(K H L H) / (n - 1)^2,     CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),

which for linear kernels (K = XX') is ||Y_c' X_c||_F^2 / (||X_c' X_c||_F ||Y_c' Y_c||_F) with
column-centred X_c, Y_c. Linear CKA is invariant to orthogonal transforms and isotropic
scaling of either representation, not to general invertible linear maps.

The unbiased minibatch estimator of Nguyen, Raghu, Kornblith (2021), "Do Wide and Deep
Networks Learn the Same Things?" (ICLR), averages the unbiased HSIC_1 of Song et al. (2012)
over minibatches of k >= 4 inputs and forms CKA from the averages:

    HSIC_1(K, L) = [tr(K~L~) + 1'K~1 1'L~1 / ((k-1)(k-2)) - 2/(k-2) 1'K~L~1] / (k(k-3)),

K~, L~ the Gram matrices with zeroed diagonals. HSIC_1 may be negative (it is unbiased):
the cross term then gives a slightly negative CKA, kept as is; a non-positive self term
gives NaN rather than a number.

Every function takes leading batch dimensions (..., n, d), so pairs of models stack.
Arithmetic is in float64.

The registered global metric ``cka``: CKA between the seeds of a replicate group, columns
``cka_<estimator>_<representation>`` in ``pairs``.
Its computation stays in ``landscape.metrics.pairs`` (``measure_pairs`` /
``measure_member_surfaces``), where the global metrics share each pair's data and the
BatchNorm recomputation of path points; this module registers its settings and columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from landscape.functional import FunctionalNet, Params, Stack, examples_per_call, loss_precision
from landscape.metrics.registry import Column, Metric, register, require_positive
from landscape.variant import ConfigError

REPRESENTATIONS = ("logits", "softmax", "features")
CKA_INPUTS = ("train", "test", "mixup")


def _check_gram(k: Tensor, name: str) -> None:
    """Each Gram matrix on its own: square and symmetric (not 'both broken' only)."""
    if k.dim() < 2 or k.shape[-1] != k.shape[-2]:
        raise ValueError(
            f"{name} must be a square Gram matrix (..., n, n), got shape {tuple(k.shape)}"
        )
    scale = k.abs().amax().clamp_min(1e-300)
    if (k - k.transpose(-1, -2)).abs().amax() > 1e-6 * scale:
        raise ValueError(f"{name} must be symmetric (a Gram matrix), got an asymmetric matrix")


def gram_linear(x: Tensor) -> Tensor:
    """(..., n, d) -> (..., n, n): x x'."""
    x = x.double()
    return x @ x.transpose(-1, -2)


def gram_rbf(x: Tensor, threshold: float = 1.0) -> Tensor:
    """Gaussian kernel exp(-||x_i - x_j||^2 / (2 sigma^2)), Kornblith et al.'s median heuristic:
    sigma^2 = ``threshold``^2 times the median of the squared distances over all n^2 ordered
    pairs, the diagonal's zeros included (their ``gram_rbf`` in google-research's
    ``representation_similarity/Demo.ipynb``: ``np.median(sq_distances)``, the mean of the two
    middle values for an even count). ``threshold`` is the "fraction of the median Euclidean
    distance" of their paper, so sigma = threshold * sqrt(median squared distance)."""
    x = x.double()
    sq = torch.cdist(x, x).square()
    flat = sq.flatten(-2).sort(-1).values  # (..., n^2)
    m = flat.shape[-1]
    median_sq = (flat[..., (m - 1) // 2] + flat[..., m // 2]) / 2  # np.median
    return torch.exp(-sq / (2 * threshold**2 * median_sq[..., None, None]))


def hsic_biased(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741
    """tr(K H L H) / (n - 1)^2 for Gram matrices (..., n, n)."""
    _check_gram(k, "K")
    _check_gram(l, "L")
    k, l = k.double(), l.double()  # noqa: E741
    n = k.shape[-1]
    kc = k - k.mean(-1, keepdim=True) - k.mean(-2, keepdim=True) + k.mean((-1, -2), keepdim=True)
    return (kc * l).sum((-1, -2)) / (n - 1) ** 2  # tr(HKH L) = <HKH, L> for symmetric L


def hsic_unbiased(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741
    """HSIC_1 of Song et al. (2012) for Gram matrices (..., n, n), n >= 4."""
    _check_gram(k, "K")
    _check_gram(l, "L")
    return _hsic1(k, l)


def _hsic1(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741
    """HSIC_1 without input checks (Gram matrices built here are symmetric by construction)."""
    n = k.shape[-1]
    if n < 4:
        raise ValueError(
            f"unbiased HSIC needs n >= 4 examples per batch (it divides by n-3), got n={n}"
        )
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    kt = k.double().masked_fill(eye, 0.0)
    lt = l.double().masked_fill(eye, 0.0)
    trace = (kt * lt).sum((-1, -2))
    k_row, l_row = kt.sum(-1), lt.sum(-1)  # (..., n): K~1, L~1
    sums = k_row.sum(-1) * l_row.sum(-1) / ((n - 1) * (n - 2))
    cross = 2 * (k_row * l_row).sum(-1) / (n - 2)  # 1'K~L~1 = (K~1).(L~1), K~ symmetric
    return (trace + sums - cross) / (n * (n - 3))


def _ratio(kl: Tensor, kk: Tensor, ll: Tensor) -> Tensor:
    """kl / sqrt(kk ll), NaN unless both self terms are > 0 (each checked on its own)."""
    ok = (kk > 0) & (ll > 0)
    return torch.where(
        ok, kl / (kk.clamp_min(1e-300).sqrt() * ll.clamp_min(1e-300).sqrt()), torch.nan
    )


def cka_from_grams(k: Tensor, l: Tensor, unbiased: bool = False) -> Tensor:  # noqa: E741
    """CKA from Gram matrices (..., n, n), biased HSIC or unbiased HSIC_1."""
    hsic = hsic_unbiased if unbiased else hsic_biased
    return _ratio(hsic(k, l), hsic(k, k), hsic(l, l))


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA (biased HSIC) of x (..., n, p) and y (..., n, q) in feature space:
    ||Y_c'X_c||_F^2 / (||X_c'X_c||_F ||Y_c'Y_c||_F). NaN if either is constant over inputs."""
    _check_pair(x, y)
    xc = x.double() - x.double().mean(-2, keepdim=True)
    yc = y.double() - y.double().mean(-2, keepdim=True)
    cross = (yc.transpose(-1, -2) @ xc).square().sum((-1, -2))
    xx = (xc.transpose(-1, -2) @ xc).square().sum((-1, -2))
    yy = (yc.transpose(-1, -2) @ yc).square().sum((-1, -2))
    return _ratio(cross, xx, yy)


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.dim() < 2 or y.dim() < 2 or x.shape[:-1] != y.shape[:-1]:
        raise ValueError(
            f"CKA needs representations of the same inputs, (..., n, p) and (..., n, q); got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )


def minibatch_cka(
    x: Tensor, y: Tensor, batch_size: int, kernel: str = "linear", threshold: float = 1.0
) -> Tensor:
    """Nguyen et al.'s unbiased minibatch CKA: HSIC_1 averaged over consecutive minibatches of
    ``batch_size`` >= 4 inputs (an incomplete last batch is dropped), CKA from the averages.
    x (..., n, p), y (..., n, q) -> (...)."""
    _check_pair(x, y)
    n = x.shape[-2]
    if batch_size < 4:
        raise ValueError(
            f"unbiased CKA needs batches of >= 4 inputs (HSIC_1 divides by n-3), got {batch_size}"
        )
    if n < 4:
        raise ValueError(f"unbiased CKA needs >= 4 inputs, got n={n}")
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    size = min(batch_size, n)
    gram = gram_linear if kernel == "linear" else (lambda z: gram_rbf(z, threshold))
    kl = kk = ll = 0.0
    batches = n // size
    for i in range(batches):
        k = gram(x[..., i * size : (i + 1) * size, :])
        l = gram(y[..., i * size : (i + 1) * size, :])  # noqa: E741
        kl = kl + _hsic1(k, l)
        kk = kk + _hsic1(k, k)
        ll = ll + _hsic1(l, l)
    return _ratio(kl / batches, kk / batches, ll / batches)


def representations(
    net: FunctionalNet,
    params: Params,
    buffers: Params,
    x: Tensor,
    kinds: Sequence[str],
    batch_size: int = 512,
) -> dict[str, Tensor]:
    """Eval-mode representations of ONE model on x (N, *input): ``logits`` (N, C), ``softmax``
    (N, C) and penultimate ``features`` (N, D), as asked. Callers vmap over models."""
    unknown = set(kinds) - set(REPRESENTATIONS)
    if unknown:
        raise ValueError(
            f"cka.representations must be among {', '.join(REPRESENTATIONS)}, got {sorted(unknown)}"
        )
    out: dict[str, list[Tensor]] = {k: [] for k in kinds}
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        if "logits" in out or "softmax" in out:
            logits = loss_precision(net.logits(params, buffers, xb))
            if "logits" in out:
                out["logits"].append(logits)
            if "softmax" in out:
                out["softmax"].append(logits.softmax(-1))
        if "features" in out:
            out["features"].append(loss_precision(net.features(params, buffers, xb)).flatten(1))
    return {k: torch.cat(v) for k, v in out.items()}


def mixup_inputs(
    x: Tensor, generator: torch.Generator, concentration: float = 16.0, batch_size: int = 128
) -> Tensor:
    """Mixup of inputs x (P, n, *input) within each model's row, as Yang et al. fed CKA:
    the row is cut into consecutive batches of ``batch_size`` (the last may be shorter); each
    batch draws ONE lambda ~ Beta(concentration, concentration) (Yang et al.: Beta(16, 16),
    batches of 128) and a random permutation of itself, and example i becomes
    lambda x_i + (1 - lambda) x_perm(i) (Zhang et al.'s mixup of a minibatch, which their code
    applies). Lambdas come from a NumPy generator seeded by ``generator``."""
    if batch_size < 1:
        raise ValueError(f"mixup batch_size must be >= 1, got {batch_size}")
    if not x.is_floating_point():  # a mix of two ids is no input: refuse, do not round
        raise ValueError(
            f"metrics.cka.inputs=mixup needs float inputs, got token ids ({x.dtype}), "
            "use metrics.cka.inputs=train or test"
        )
    P, n = x.shape[:2]
    starts = range(0, n, batch_size)
    partner = torch.stack(
        [
            torch.cat(
                [s + torch.randperm(min(batch_size, n - s), generator=generator) for s in starts]
            )
            for _ in range(P)
        ]
    ).to(x.device)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam_batch = np.random.default_rng(seed).beta(
        concentration, concentration, size=(P, len(starts))
    )
    lam = np.repeat(lam_batch, [min(batch_size, n - s) for s in starts], axis=1)  # (P, n)
    lam = torch.as_tensor(lam, dtype=x.dtype, device=x.device).view(P, n, *([1] * (x.dim() - 2)))
    other = x.gather(1, partner.view(P, n, *([1] * (x.dim() - 2))).expand_as(x))
    return lam * x + (1 - lam) * other


@torch.no_grad()
def pair_cka(
    net: FunctionalNet,
    a: Stack,
    b: Stack,
    x: Tensor,
    *,
    kinds: Sequence[str] = REPRESENTATIONS,
    unbiased_batch_size: int | None = 256,
    rbf_threshold: float | None = None,
    batch_size: int = 512,
) -> dict[str, Tensor]:
    """CKA between P pairs of models (stacked in ``a`` and ``b``) on inputs x (P, N, *input).

    Returns ``{f"linear_{kind}": (P,)}`` (biased linear CKA), plus ``unbiased_{kind}`` (the
    minibatch estimator, when ``unbiased_batch_size`` is set) and ``rbf_{kind}`` (biased RBF
    CKA, when ``rbf_threshold`` is set), for every representation kind."""
    batch_size = examples_per_call(net, tuple(x.shape[2:]), a.members, batch_size)
    rep = vmap(lambda p, bf, xs: representations(net, p, bf, xs, kinds, batch_size))
    ra, rb = rep(a.params, a.buffers, x), rep(b.params, b.buffers, x)
    out = {}
    for kind in kinds:
        out[f"linear_{kind}"] = linear_cka(ra[kind], rb[kind])
        if unbiased_batch_size is not None:
            out[f"unbiased_{kind}"] = minibatch_cka(ra[kind], rb[kind], unbiased_batch_size)
        if rbf_threshold is not None:
            out[f"rbf_{kind}"] = cka_from_grams(
                gram_rbf(ra[kind], rbf_threshold), gram_rbf(rb[kind], rbf_threshold)
            )
    return out


@dataclass(frozen=True)
class CKASpec:
    """Linear CKA (Kornblith et al. 2019) and the unbiased minibatch estimator (Nguyen et al.
    2021) between the two members of a pair. Yang et al.: 768 training inputs mixed up with
    lambda ~ Beta(16, 16), logits and softmax outputs."""

    enabled: bool = True
    inputs: str = "mixup"  # train | test | mixup (of training inputs)
    n_inputs: int = 768  # Yang et al.
    mixup_concentration: float = 16.0  # lambda ~ Beta(c, c); Yang et al.: 16
    representations: tuple[str, ...] = REPRESENTATIONS  # logits, softmax, penultimate features
    unbiased: bool = True  # also the minibatch HSIC_1 estimator (cka_unbiased_* columns)
    unbiased_batch_size: int = 256  # inputs per minibatch of the unbiased estimator, >= 4
    rbf: bool = False  # also biased RBF CKA (cka_rbf_* columns)
    rbf_threshold: float = 1.0  # RBF sigma as a multiple of the median pairwise distance

    def __post_init__(self) -> None:
        if self.inputs not in CKA_INPUTS:
            raise ConfigError(
                f"metrics.cka.inputs must be one of {', '.join(CKA_INPUTS)}, got {self.inputs!r}"
            )
        if self.n_inputs < 4:
            raise ConfigError(
                f"metrics.cka.n_inputs must be >= 4 (unbiased HSIC needs n > 3), got {self.n_inputs}"
            )
        if self.unbiased_batch_size < 4:
            raise ConfigError(
                f"metrics.cka.unbiased_batch_size must be >= 4 (HSIC_1 divides by n-3), got {self.unbiased_batch_size}"
            )
        unknown = set(self.representations) - set(REPRESENTATIONS)
        if unknown or not self.representations:
            raise ConfigError(
                f"metrics.cka.representations must be a non-empty subset of {REPRESENTATIONS}, got {self.representations!r}"
            )
        require_positive("metrics.cka.mixup_concentration", self.mixup_concentration)
        require_positive("metrics.cka.rbf_threshold", self.rbf_threshold)


# (estimator, representation) -> its column in pairs, as pair_cka names them
COLUMNS = {
    ("linear", "logits"): Column(
        "cka_linear_logits", "linear CKA (logits)", table="pairs", report=19
    ),
    ("linear", "softmax"): Column(
        "cka_linear_softmax",
        "CKA (softmax)",
        table="pairs",
        report=18,
        summary=True,
        phase_diagram=True,
    ),
    ("linear", "features"): Column(
        "cka_linear_features", "linear CKA (features)", table="pairs", report=20
    ),
    ("unbiased", "logits"): Column("cka_unbiased_logits", "unbiased CKA (logits)", table="pairs"),
    ("unbiased", "softmax"): Column(
        "cka_unbiased_softmax", "unbiased CKA (softmax)", table="pairs"
    ),
    ("unbiased", "features"): Column(
        "cka_unbiased_features", "unbiased CKA (features)", table="pairs"
    ),
    ("rbf", "logits"): Column("cka_rbf_logits", "RBF CKA (logits)", table="pairs"),
    ("rbf", "softmax"): Column("cka_rbf_softmax", "RBF CKA (softmax)", table="pairs"),
    ("rbf", "features"): Column("cka_rbf_features", "RBF CKA (features)", table="pairs"),
}


def _columns(s: CKASpec) -> tuple[Column, ...]:
    estimators = ("linear", *(("unbiased",) if s.unbiased else ()), *(("rbf",) if s.rbf else ()))
    return tuple(COLUMNS[e, rep] for rep in s.representations for e in estimators)


register(
    Metric(
        name="cka",
        spec=CKASpec,
        family="global",
        order=101,
        hashed_when_off=True,
        columns=_columns,
        passes=("pairs",),
    )
)
