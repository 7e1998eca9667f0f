"""Functional optimisers against torch.optim (one instance per member on plain tensors),
member freezing, and the learning-rate schedules against torch's schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from landscape.optim import MemberHypers, base_lr, lr_factor
from landscape.train import apply_update, init_state
from landscape.variant import OptimSpec

K = 3
LR = [0.1, 0.03, 0.01]
MOMENTUM = [0.9, 0.5, 0.0]  # 0 exercises torch's momentum-free branch (sgd, rmsprop)
WEIGHT_DECAY = [0.0, 5e-4, 1e-2]
SHAPES = {"conv.weight": (4, 2, 3, 3), "conv.bias": (4,), "head.weight": (5, 4)}

# (our spec, torch optimiser class, torch kwargs for member k)
CASES = [
    pytest.param(
        OptimSpec(name="sgd"),
        torch.optim.SGD,
        lambda k: {"lr": LR[k], "momentum": MOMENTUM[k], "weight_decay": WEIGHT_DECAY[k]},
        id="sgd",
    ),
    pytest.param(
        OptimSpec(name="sgd", nesterov=True),
        torch.optim.SGD,
        lambda k: {
            "lr": LR[k],
            "momentum": MOMENTUM[k] or 0.3,
            "weight_decay": WEIGHT_DECAY[k],
            "nesterov": True,
        },
        id="sgd-nesterov",
    ),
    pytest.param(
        OptimSpec(name="adam", betas=(0.8, 0.99), eps=1e-6),
        torch.optim.Adam,
        lambda k: {"lr": LR[k], "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": WEIGHT_DECAY[k]},
        id="adam",
    ),
    pytest.param(
        OptimSpec(name="adamw"),
        torch.optim.AdamW,
        lambda k: {"lr": LR[k], "weight_decay": WEIGHT_DECAY[k] * 10},
        id="adamw",
    ),
    pytest.param(
        OptimSpec(name="rmsprop", alpha=0.9, eps=1e-6),
        torch.optim.RMSprop,
        lambda k: {
            "lr": LR[k],
            "alpha": 0.9,
            "eps": 1e-6,
            "momentum": MOMENTUM[k],
            "weight_decay": WEIGHT_DECAY[k],
        },
        id="rmsprop",
    ),
    pytest.param(
        OptimSpec(name="adagrad", eps=1e-10),
        torch.optim.Adagrad,
        lambda k: {"lr": LR[k], "eps": 1e-10, "weight_decay": WEIGHT_DECAY[k]},
        id="adagrad",
    ),
]


def _hypers(torch_kwargs) -> MemberHypers:
    cols = [torch_kwargs(k) for k in range(K)]
    return MemberHypers(
        lr=torch.tensor([c["lr"] for c in cols]),
        momentum=torch.tensor([c.get("momentum", 0.0) for c in cols]),
        weight_decay=torch.tensor([c["weight_decay"] for c in cols]),
    )


def _stacked_params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(K, *s, generator=g) for n, s in SHAPES.items()}


def _grads(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return {n: torch.randn(K, *s, generator=g) for n, s in SHAPES.items()}


@pytest.mark.parametrize(("spec", "torch_cls", "torch_kwargs"), CASES)
def test_matches_torch_optim_per_member(spec, torch_cls, torch_kwargs):
    """Five updates of our functional optimiser against torch.optim on fixed gradients (no
    network, so nothing amplifies rounding): within 0.15 of the 1e-6 tolerance (measured with 1
    and 2 threads and ATEN_CPU_CAPABILITY=default/avx2/avx512)."""
    params = _stacked_params()
    state = init_state(spec, params)
    hypers = _hypers(torch_kwargs)
    alive = torch.ones(K, dtype=torch.bool)
    reference = [{n: p[k].clone().requires_grad_() for n, p in params.items()} for k in range(K)]
    optimisers = [torch_cls(list(reference[k].values()), **torch_kwargs(k)) for k in range(K)]
    for step in range(1, 6):
        grads = _grads(step)
        apply_update(spec, params, grads, state, hypers, hypers.lr, step, alive)
        for k in range(K):
            for n, p in reference[k].items():
                p.grad = grads[n][k].clone()
            optimisers[k].step()
    for k in range(K):
        for n, p in reference[k].items():
            torch.testing.assert_close(params[n][k], p.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("spec", "torch_cls", "torch_kwargs"), CASES)
def test_dead_members_are_zeroed_and_the_others_move_on(spec, torch_cls, torch_kwargs):
    """A dead member (NaN gradients here) is set to zero, parameters and state, and stays
    there; the live members' updates are exactly those of a pack without it."""
    params, reference = _stacked_params(), _stacked_params()
    state, ref_state = init_state(spec, params), init_state(spec, reference)
    hypers = _hypers(torch_kwargs)
    everyone = torch.ones(K, dtype=torch.bool)
    alive = torch.tensor([True, False, True])
    for step in range(1, 5):
        grads = _grads(step)
        apply_update(spec, reference, grads, ref_state, hypers, hypers.lr, step, everyone)
        if step > 1:
            for g in grads.values():
                g[1] = float("nan")  # a diverged member's gradients
        still = apply_update(
            spec, params, grads, state, hypers, hypers.lr, step, alive if step > 1 else everyone
        )
        assert still.tolist() == ([True, True, True] if step == 1 else [True, False, True])
    for n, p in params.items():
        assert torch.equal(p[1], torch.zeros_like(p[1]))
        assert torch.equal(p[[0, 2]], reference[n][[0, 2]])
    for slot in state.values():
        for t in slot.values():
            assert torch.equal(t[1], torch.zeros_like(t[1]))


MULTIPLIED = pytest.param(
    OptimSpec(name="sgd", lr_multipliers={"head.*": 10.0, "conv.bias": 0.5}),
    torch.optim.SGD,
    CASES[0].values[2],
    id="sgd-lr-multipliers",
)


@pytest.mark.parametrize("members", [1, 3], ids=["one", "three"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("member", [0, 2], ids=["no-decay", "decay"])
@pytest.mark.parametrize(("spec", "torch_cls", "torch_kwargs"), [*CASES, MULTIPLIED])
def test_a_pack_laid_out_in_one_matrix_updates_bit_identically(
    spec, torch_cls, torch_kwargs, member, dtype, members
):
    """``SlotState.adopt`` (a pack's parameters as views of the update's (K, P) matrix)
    against the same pack with its own tensors, four steps, the last with a NaN gradient that
    kills member 0: torch.equal, parameters and state, since the rule runs the same kernels
    on the same (K, P) values either way (only the concatenation and the copy back are gone).
    SGD on a CPU takes its in-place update there (``landscape.optim.sgd_in_place``), the
    others the rule and a copy into the matrix. The adopted views hold the parameters' values
    and shapes (a pack of one's contiguous), and a tensor replaced in the dict afterwards is
    updated through the concatenating path."""
    hypers = _hypers(lambda k: torch_kwargs(member))
    hypers = MemberHypers(
        hypers.lr[:members], hypers.momentum[:members], hypers.weight_decay[:members]
    )
    a = {n: p[:members].to(dtype) for n, p in _stacked_params().items()}
    b = {n: p.clone() for n, p in a.items()}
    sa, sb = init_state(spec, a), init_state(spec, b)
    sa.adopt(a)
    assert sa.laid_out(a) and not sb.laid_out(b)
    for n in a:
        assert torch.equal(a[n], b[n]) and a[n].shape == b[n].shape
        assert a[n].is_contiguous() == (members == 1)
    alive = torch.ones(members, dtype=torch.bool)
    for step in range(1, 5):
        grads = {n: g[:members].to(dtype) for n, g in _grads(step).items()}
        if step == 4:
            grads["head.weight"][0, 0, 0] = float("nan")
        got = apply_update(spec, a, grads, sa, hypers, hypers.lr, step, alive)
        want = apply_update(spec, b, grads, sb, hypers, hypers.lr, step, alive)
        assert torch.equal(got, want) and got.tolist() == [step < 4] + [True] * (members - 1)
        for n in a:
            assert torch.equal(a[n], b[n]), (step, n)
        for slot in sa:
            assert torch.equal(sa.flat[slot], sb.flat[slot]), (step, slot)
    a["conv.bias"] = a["conv.bias"].clone()
    assert not sa.laid_out(a)


def test_adopt_leaves_a_pack_of_several_members_off_a_cpu_alone():
    """Off a CPU (here the meta device) only a pack of one is laid out: a larger pack's
    member blocks would be strided views, which GPU kernels (a vmapped grouped convolution,
    say) would copy."""
    params = {n: p.to("meta") for n, p in _stacked_params().items()}
    before = dict(params)
    state = init_state(OptimSpec(name="sgd"), params)
    state.adopt(params)
    assert all(params[n] is before[n] for n in params) and not state.laid_out(params)
    one = {n: p[:1] for n, p in params.items()}
    init_state(OptimSpec(name="sgd"), one).adopt(one)
    assert all(one[n] is not before[n] for n in one)


@pytest.mark.parametrize("huge_lr", [math.inf, 1e30], ids=["non-finite", "huge"])
def test_an_update_that_makes_parameters_non_finite_or_huge_kills_the_member(huge_lr):
    """lr = 1e30 leaves finite parameters of ~1e29, past DIVERGED_ABOVE: dead at once, so
    they never reach a kernel shared with the other members."""
    spec = OptimSpec(name="sgd", momentum=0.9)
    params = _stacked_params()
    hypers = MemberHypers.from_specs([spec] * K, "cpu")
    lr = torch.tensor([0.1, huge_lr, 0.1])
    still = apply_update(
        spec,
        params,
        _grads(1),
        init_state(spec, params),
        hypers,
        lr,
        1,
        torch.ones(K, dtype=torch.bool),
    )
    assert still.tolist() == [True, False, True]
    assert all(torch.equal(p[1], torch.zeros_like(p[1])) for p in params.values())
    assert all(torch.isfinite(p).all() for p in params.values())


def test_init_state_slots_are_zeros_shaped_like_params():
    params = _stacked_params()
    state = init_state(OptimSpec(name="adam"), params)
    assert set(state) == {"exp_avg", "exp_avg_sq"}
    assert all(t.shape == params[n].shape and not t.any() for n, t in state["exp_avg"].items())


def test_member_hypers_from_specs():
    specs = [OptimSpec(lr=0.1, momentum=0.9, weight_decay=5e-4), OptimSpec(lr=0.2, momentum=0.0)]
    h = MemberHypers.from_specs(specs, "cpu")
    torch.testing.assert_close(h.lr, torch.tensor([0.1, 0.2]))
    torch.testing.assert_close(h.momentum, torch.tensor([0.9, 0.0]))
    torch.testing.assert_close(h.weight_decay, torch.tensor([5e-4, 0.0]))


def test_base_lr_linear_scaling():
    assert base_lr(OptimSpec(lr=0.1, batch_size=256, lr_ref_batch_size=128)) == pytest.approx(0.2)
    assert base_lr(OptimSpec(lr=0.1, batch_size=256)) == 0.1


def _torch_schedule(scheduler_factory, steps: int, per: int = 1) -> list[float]:
    """Learning rates torch's scheduler gives at each step (base lr 1), stepping every ``per``."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = scheduler_factory(opt)
    lrs = []
    for s in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if (s + 1) % per == 0:
            sched.step()
    return lrs


def test_constant_schedule():
    spec = OptimSpec(schedule="constant")
    assert all(lr_factor(spec, s, 100, 10) == 1.0 for s in range(100))


def test_step_schedule_is_yangs_x01_at_epoch_75():
    # Yang et al.: 100 epochs, lr x0.1 at epoch 75 == torch MultiStepLR(milestones=[75]) per epoch
    spec, spe, epochs = OptimSpec(schedule="step", step_at=(0.75,), gamma=0.1), 7, 100
    ours = [lr_factor(spec, s, spe * epochs, spe) for s in range(spe * epochs)]
    ref = _torch_schedule(
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [75], 0.1), spe * epochs, per=spe
    )
    assert ours == pytest.approx(ref, rel=1e-9)
    assert ours[75 * spe - 1] == 1.0 and ours[75 * spe] == pytest.approx(0.1)


def test_cosine_schedule_matches_torch():
    spec, total = OptimSpec(schedule="cosine"), 50
    ours = [lr_factor(spec, s, total, 5) for s in range(total)]
    ref = _torch_schedule(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total), total
    )
    assert ours == pytest.approx(ref, abs=1e-9)


def test_linear_warmup_then_schedule():
    spec = OptimSpec(schedule="cosine", warmup_epochs=2)  # 2 epochs x 5 steps = 10 warm-up steps
    factors = [lr_factor(spec, s, 60, 5) for s in range(60)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == 1.0  # the cosine starts at its top after warm-up
    assert factors[35] == pytest.approx(0.5 * (1 + math.cos(math.pi * 25 / 50)))
    # a fractional warm-up never overshoots 1
    frac = OptimSpec(schedule="constant", warmup_epochs=0.5)  # 2.5 steps
    assert [lr_factor(frac, s, 20, 5) for s in range(4)] == pytest.approx([0.4, 0.8, 1.0, 1.0])


def test_per_layer_lr_multipliers_scale_only_matching_parameters():
    from landscape.optim import lr_multiplier

    spec = OptimSpec(
        name="sgd", momentum=0.0, lr_multipliers={"head.*": 10.0, "head.bias": 0.0, "body.*": 0.5}
    )
    assert spec.lr_multipliers == (
        ("body.*", 0.5),
        ("head.*", 10.0),
        ("head.bias", 0.0),
    )  # hashable, sorted
    assert lr_multiplier(spec, "head.weight") == 10.0
    assert lr_multiplier(spec, "head.bias") == 0.0  # the longest matching pattern wins
    assert lr_multiplier(spec, "body.0.weight") == 0.5
    assert lr_multiplier(spec, "stem.weight") == 1.0
    params = {
        n: torch.ones(2, 3) for n in ("head.weight", "head.bias", "body.0.weight", "stem.weight")
    }
    grads = {n: torch.ones(2, 3) for n in params}
    hypers = MemberHypers.from_specs([spec, spec], "cpu")
    apply_update(
        spec,
        params,
        grads,
        init_state(spec, params),
        hypers,
        torch.tensor([0.1, 0.2]),
        1,
        torch.ones(2, dtype=torch.bool),
    )
    # p = 1 - lr_k * multiplier * g
    assert torch.allclose(params["head.weight"][:, 0], torch.tensor([0.0, -1.0]))
    assert torch.equal(params["head.bias"], torch.ones(2, 3))
    assert torch.allclose(params["body.0.weight"][:, 0], torch.tensor([0.95, 0.9]))
    assert torch.allclose(params["stem.weight"][:, 0], torch.tensor([0.9, 0.8]))


@pytest.mark.parametrize(("epochs", "drop_after"), [(100, 75), (6, 5), (8, 6), (30, 23), (4, 3)])
def test_step_milestone_is_the_first_epoch_at_or_past_the_fraction(epochs, drop_after):
    """Yang et al. drop the rate for 0-based epochs e >= 0.75 * epochs: after ceil(0.75 E)
    finished epochs (6 epochs: after 5, not after round(4.5) = 4)."""
    spec, spe = OptimSpec(schedule="step", step_at=(0.75,), gamma=0.1), 3
    factors = [lr_factor(spec, s, spe * epochs, spe) for s in range(spe * epochs)]
    assert factors[drop_after * spe - 1] == 1.0
    assert factors[drop_after * spe] == pytest.approx(0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_the_hyperparameter_columns_kept_between_steps_follow_the_hyperparameters(dtype):
    """``SlotState.columns`` keeps the (K, 1) momentum and decay between updates: they must
    still read the members' values after those change in place or are replaced (a float64
    pack's columns are copies, so they are made again)."""
    params = {n: p.to(dtype) for n, p in _stacked_params().items()}
    state = init_state(OptimSpec(name="sgd"), params)
    hypers = _hypers(CASES[0].values[2])
    for change in (lambda: None, lambda: hypers.momentum.mul_(0.5)):
        change()
        mu, wd = state.columns(hypers, dtype)
        assert mu.dtype == dtype and torch.equal(mu[:, 0], hypers.momentum.to(dtype))
        assert torch.equal(wd[:, 0], hypers.weight_decay.to(dtype))
    hypers.weight_decay = torch.zeros(K)
    assert torch.equal(state.columns(hypers, dtype)[1][:, 0], torch.zeros(K, dtype=dtype))
    hypers.decays = False
    assert state.columns(hypers, dtype)[1] is None
