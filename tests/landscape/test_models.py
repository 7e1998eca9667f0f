"""Models: shapes, parameter counts (derived by hand for tiny widths), the no-skip ResNet,
and stacked (vmapped) evaluation equal to a loop over members, BN training mode included."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, vmap

from landscape.functional import init_stack, unstack
from landscape.models import MODELS, TOKEN_MODELS, BasicBlock, build_model
from landscape.variant import ConfigError, ModelSpec

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]  # MNIST, CIFAR, digits


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_model(spec: ModelSpec, shape=(3, 32, 32), classes: int = 10) -> torch.nn.Module:
    with torch.device("meta"):  # counts without allocating or initialising weights
        return build_model(spec, shape, classes)


def test_registry_covers_every_model_name():
    from landscape.variant import MODEL_NAMES

    assert set(MODELS) | set(TOKEN_MODELS) == set(MODEL_NAMES)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(
    ("name", "feature_dim"),
    [
        ("mlp", 2),
        ("cnn", 4),
        ("resnet18", 16),
        ("vgg9", 8),
    ],  # width 2: mlp 2, cnn 2k, resnet 8k, vgg 4k
)
def test_logits_and_features_shapes(name, feature_dim, shape):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name=name, width=2, batch_norm=True), shape, 7)
    x = torch.randn(3, *shape)
    assert model(x).shape == (3, 7)
    assert model(x, features=True).shape == (3, feature_dim)


def test_mlp_parameter_count():
    # digits (64 inputs), width 32, depth 2, 10 classes:
    # 64*32+32 + 32*32+32 + 32*10+10 = 2080 + 1056 + 330 = 3466
    assert n_params(meta_model(ModelSpec(name="mlp", width=32, depth=2), (1, 8, 8))) == 3466


def test_resnet18_parameter_count_width_1():
    # k=1, 3 input channels, 10 classes, BN (convs without bias; each BN has 2 params per channel):
    # stem  3->1: 27 + bn 2                                                   =   29
    # stage1 (1->1, identity shortcuts): 2 blocks x (9 + 2 + 9 + 2)           =   44
    # stage2 (1->2): (18+4 + 36+4 + proj 2+4) + (36+4 + 36+4)                 =  148
    # stage3 (2->4): (72+8 + 144+8 + proj 8+8) + (144+8 + 144+8)              =  552
    # stage4 (4->8): (288+16 + 576+16 + proj 32+16) + (576+16 + 576+16)       = 2128
    # head 8->10: 80 + 10                                                     =   90
    assert n_params(meta_model(ModelSpec(name="resnet18", width=1, batch_norm=True))) == 2991
    # skip=False drops the three projections: 2991 - (2+4) - (8+8) - (32+16) = 2921
    assert (
        n_params(meta_model(ModelSpec(name="resnet18", width=1, batch_norm=True, skip=False)))
        == 2921
    )
    # without BN each conv gets a bias (1 per output channel) in place of its BN (2 per channel):
    # one parameter fewer per BN channel; BN channels = stem 1 + stage1 4x1 + stages 2-4 5 BNs
    # each (two blocks x two convs + the projection) x 2, 4, 8 channels = 1 + 4 + 10 + 20 + 40 = 75
    assert n_params(meta_model(ModelSpec(name="resnet18", width=1, batch_norm=False))) == 2991 - 75


def test_resnet18_standard_width_matches_the_reference_count():
    # k=64 is kuangliu/pytorch-cifar's ResNet18: 11,173,962 parameters for CIFAR-10.
    assert n_params(meta_model(ModelSpec(name="resnet18", width=64, batch_norm=True))) == 11_173_962


def test_vgg9_parameter_count_width_1():
    # k=1 on 32x32 (conv biases kept under BN, as in Li et al.'s code):
    # convs (w + b) + BN:  3->1 28+2, 1->1 10+2, 1->2 20+4, 2->2 38+4, 2->4 76+8, 4->4 148+8 (x2) = 504
    # fc 4*4*4 -> 4: 256+4, BN1d 8                                                                = 268
    # head 4->10: 40+10                                                                            =  50
    assert n_params(meta_model(ModelSpec(name="vgg9", width=1, batch_norm=True))) == 822
    # k=64 is Li et al.'s VGG-9 (fc input 256*4*4)
    assert n_params(meta_model(ModelSpec(name="vgg9", width=64, batch_norm=True))) == 2_789_706


def test_image_models_reject_vector_inputs():
    with pytest.raises(ConfigError, match="model=mlp"):
        build_model(ModelSpec(name="resnet18"), (32,), 4)


def _zero_residual_branch(block: BasicBlock) -> None:
    """Make the residual branch output exactly 0 in eval mode (last conv zero, BN shift 0)."""
    with torch.no_grad():
        for p in block.conv2.parameters():
            p.zero_()


@pytest.mark.parametrize("batch_norm", [True, False])
def test_no_skip_resnet_has_no_residual_add(batch_norm):
    torch.manual_seed(0)
    x = torch.rand(2, 4, 6, 6)  # non-negative: relu(x) == x
    with_skip = BasicBlock(4, 4, 1, batch_norm, skip=True).eval()
    no_skip = BasicBlock(4, 4, 1, batch_norm, skip=False).eval()
    _zero_residual_branch(with_skip)
    _zero_residual_branch(no_skip)
    assert torch.equal(with_skip(x), x)  # relu(0 + x)
    assert torch.equal(no_skip(x), torch.zeros_like(x))  # relu(0): nothing added back
    model = build_model(
        ModelSpec(name="resnet18", width=2, batch_norm=batch_norm, skip=False), (3, 8, 8), 10
    )
    assert not any("shortcut" in n for n, _ in model.named_parameters())
    assert all(not m.skip for m in model.modules() if isinstance(m, BasicBlock))


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(name="resnet18", width=2, batch_norm=True),
        ModelSpec(name="resnet18", width=2, batch_norm=True, skip=False),
        ModelSpec(name="vgg9", width=2, batch_norm=True),
        ModelSpec(name="cnn", width=3, batch_norm=True),
        ModelSpec(name="mlp", width=8, depth=2, batch_norm=True),
    ],
    ids=["resnet18", "resnet18-noskip", "vgg9", "cnn", "mlp"],
)
def test_vmapped_train_mode_equals_a_loop(spec):
    """One train-mode forward of a vmapped stack against each member as a plain module, in
    float64: batched and single convolution kernels sum in different orders, and in float32
    BatchNorm over 6 examples amplifies that through 17 layers to 0.86 of a 1e-4 tolerance
    (ResNet18 without skips, measured); float64 leaves ~1e-13, inside 1e-9 on any CPU."""
    shape, K = (3, 8, 8), 3
    net, stack = init_stack(lambda: build_model(spec, shape, 5), seeds=[0, 1, 2], device="cpu")
    stack = stack.to("cpu", torch.float64)
    looped = stack.clone()
    x = torch.randn(K, 6, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def member(params, buffers, xb):
        return net.logits(params, buffers, xb, train=True)

    stacked_logits = vmap(member)(stack.params, stack.buffers, x)  # updates stack.buffers in place
    for k in range(K):
        params, buffers = unstack(looped, k)
        model = build_model(spec, shape, 5).double().train()
        logits = functional_call(model, (params, buffers), (x[k],))  # plain module, one member
        assert logits.dtype == torch.float64
        torch.testing.assert_close(stacked_logits[k], logits, rtol=1e-9, atol=1e-12)
        for name, buf in buffers.items():
            torch.testing.assert_close(stack.buffers[name][k], buf, rtol=1e-9, atol=1e-12)
    if spec.batch_norm:
        changed = [n for n in stack.buffers if "running_mean" in n]
        assert changed and all(
            stack.buffers[n].abs().sum() > 0 for n in changed
        )  # stats really moved
        assert all(
            int(b.max()) == 1 for n, b in stack.buffers.items() if "num_batches_tracked" in n
        )


def test_vmapped_gradients_equal_a_loop_for_resnet18():
    spec, shape, K = ModelSpec(name="resnet18", width=2, batch_norm=True), (1, 8, 8), 3
    net, stack = init_stack(lambda: build_model(spec, shape, 4), seeds=[3, 4, 5], device="cpu")
    looped = stack.clone()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(K, 5, *shape, generator=g), torch.randint(4, (K, 5), generator=g)
    grad_fn = torch.func.grad(lambda p, b, xb, yb: net.loss(p, b, xb, yb, train=True))
    grads = vmap(grad_fn)(stack.params, stack.buffers, x, y)
    for k in range(K):
        params, buffers = unstack(looped, k)
        g_k = grad_fn(params, buffers, x[k], y[k])  # buffers are inputs: BN may update them
        flat = torch.cat([grads[n][k].flatten() for n in params])
        ref = torch.cat([g_k[n].flatten() for n in params])
        assert (flat - ref).norm() <= 5e-5 * ref.norm()  # float rounding only (seen: ~5e-6)


@pytest.mark.parametrize(
    "spec,shape",
    [
        (ModelSpec("resnet18", width=2, batch_norm=True), (1, 8, 8)),  # down to 1x1 at the end
        (ModelSpec("mlp", width=16, depth=2, batch_norm=True), (64,)),
    ],
    ids=["resnet18-bn-8x8", "mlp-bn"],
)
def test_forward_flops_of_batchnorm_models_on_small_inputs(spec, shape):
    """Counted on one example: BatchNorm must not ask for a batch (eval mode)."""
    from landscape.models import model_forward_flops

    flops = model_forward_flops(spec, shape, 10)
    if spec.name == "mlp":
        assert flops == 2 * (64 * 16 + 16 * 16 + 16 * 10)
    else:
        assert flops > 2 * 3 * 3 * 1 * 2 * 8 * 8  # at least the stem convolution


TF = ModelSpec("transformer", width=8, depth=2, heads=2, mlp_ratio=3, patch=2)


def test_transformer_reads_tokens_and_patches_and_counts_its_parameters():
    """Shapes of logits and features for token ids (B, T) and for images cut into patches,
    and the parameter count in closed form: embedding + positions + per block (two
    LayerNorms 2*2C, qkv C*3C+3C, proj C*C+C, MLP C*rC+rC + rC*C+C) + final LayerNorm 2C +
    head C*classes+classes."""
    C, r, depth, classes = 8, 3, 2, 7
    block = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (r * C * C + r * C) + (r * C * C + C)
    tail = 2 * C + C * classes + classes
    tokens = build_model(TF, (5,), classes, vocab=11)
    x = torch.randint(11, (3, 5))
    assert tokens(x).shape == (3, classes) and tokens(x, features=True).shape == (3, C)
    assert n_params(tokens) == 11 * C + 5 * C + depth * block + tail
    vit = build_model(TF, (1, 8, 8), classes)  # 16 patches of 1 x 2 x 2
    img = torch.randn(3, 1, 8, 8)
    assert vit(img).shape == (3, classes) and vit(img, features=True).shape == (3, C)
    assert n_params(vit) == (4 * C + C) + 16 * C + depth * block + tail


@pytest.mark.parametrize(
    ("spec", "shape", "vocab", "match"),
    [
        (ModelSpec("transformer", width=8, heads=3), (5,), 4, "model.heads must divide"),
        (ModelSpec("transformer", width=8, heads=2, patch=3), (1, 8, 8), 0, "model.patch"),
        (ModelSpec("transformer", width=8, heads=2, batch_norm=True), (5,), 4, "batch_norm"),
        (ModelSpec("cnn"), (5,), 4, "model=transformer"),
    ],
)
def test_transformer_knobs_and_token_data_are_checked_in_one_line(spec, shape, vocab, match):
    with pytest.raises(ConfigError, match=match):
        build_model(spec, shape, 3, vocab)


def test_meta_device_helpers_feed_token_models_int64_ids():
    """The FLOP count, the leaf output sizes and the widest activation of a token model
    come from a meta-device pass on int64 ids (float dummies would fail in the embedding):
    the widest output of one example is the qkv projection, T x 3C."""
    from landscape.functional import FunctionalNet
    from landscape.models import model_forward_flops

    spec = ModelSpec("transformer", width=8, depth=1, heads=2, mlp_ratio=2)
    assert model_forward_flops(spec, (5,), 3, 11) > 0
    net = FunctionalNet(build_model(spec, (5,), 3, vocab=11))
    assert net.widest_activation((5,)) == 5 * 3 * 8


ZOO = [
    (ModelSpec("mlp", width=8, depth=2, batch_norm=True), (1, 8, 8), 0),
    (ModelSpec("cnn", width=4, batch_norm=True), (3, 16, 16), 0),
    (ModelSpec("resnet18", width=2, batch_norm=True), (3, 16, 16), 0),
    (ModelSpec("resnet18", width=2, skip=False), (3, 16, 16), 0),
    (ModelSpec("vgg9", width=2, batch_norm=True), (3, 16, 16), 0),
    (ModelSpec("transformer", width=8, depth=2, heads=2, mlp_ratio=3), (5,), 11),
    (ModelSpec("transformer", width=8, depth=1, heads=2, patch=2), (1, 8, 8), 0),
]
ZOO_IDS = ["mlp-bn", "cnn-bn", "resnet18-bn", "resnet18-noskip", "vgg9-bn", "gpt", "vit"]


@pytest.mark.parametrize(("spec", "shape", "vocab"), ZOO, ids=ZOO_IDS)
def test_forward_flops_are_torchs_flop_counter_count(spec, shape, vocab):
    """The hooks that count a model's FLOPs (model_forward_flops, which avoids importing the
    counter's compiler stack in every driver) count what torch.utils.flop_counter counts on
    the meta device: integers, equal."""
    from torch.utils.flop_counter import FlopCounterMode

    from landscape.functional import example_input
    from landscape.models import model_forward_flops

    with torch.device("meta"):
        model = build_model(spec, shape, 10, vocab).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example_input(model, shape, 1, "meta"))
    assert counter.get_total_flops() > 0
    assert model_forward_flops(spec, shape, 10, vocab) == float(counter.get_total_flops())


@pytest.mark.parametrize(("spec", "shape", "vocab"), ZOO, ids=ZOO_IDS)
def test_leaf_output_sizes_on_the_cpu_are_the_meta_devices(spec, shape, vocab):
    """A small model's leaf output sizes come from CPU passes of 2 and 3 examples, extrapolated
    to the batch (landscape.functional.leaf_output_sizes): equal to one meta-device pass of the
    whole batch, in train mode (memory estimates) and eval mode (one example)."""
    from landscape.functional import _sizes, leaf_output_sizes

    with torch.device("meta"):
        model = build_model(spec, shape, 10, vocab)
    for train, batches in ((True, (2, 3, 16, 129)), (False, (1, 7))):
        model.train(train)
        for batch in batches:
            assert leaf_output_sizes(model, shape, batch) == _sizes(model, shape, batch, "meta")
