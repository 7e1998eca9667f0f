"""Model registry. Every model takes ``forward(x, features=False)``: with ``features=True`` it
returns the penultimate representation (for CKA on features), otherwise logits.

``build_model(spec, input_shape, num_classes, vocab=0)`` is the one constructor; architecture
variants are entries in ``MODELS``. ``vocab`` > 0 says the inputs are int64 token ids in
[0, vocab) of shape (T,) (only the transformer reads them); a model that reads tokens has a
``vocab`` attribute, so the meta-device helpers feed it token dummies
(:func:`landscape.functional.example_input`). Every model runs under ``torch.func.functional_call`` +
``vmap`` over stacked parameters and buffers, in train mode too (BatchNorm running
statistics update in place on the stacked buffers): no in-place activations, no ops that
vmap cannot batch. BatchNorm runs in float32 even under bf16 autocast (see
:class:`BatchNorm2d`); a model made float64 runs in float64 throughout.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn

from landscape.functional import example_input, probe_device
from landscape.variant import ConfigError, ModelSpec

_NATIVE_NORM: ContextVar[bool] = ContextVar("native_norm", default=False)


@contextmanager
def native_norm() -> Iterator[None]:
    """Inside this context BatchNorm takes low-precision activations as they are (the
    library normalises them with float32 statistics and parameters, as in ordinary mixed
    precision training), saving two casts of every activation. For models run one member
    at a time (``StepFn`` mode ``loop``); not under vmap (see :class:`_Float32Norm`)."""
    token = _NATIVE_NORM.set(True)
    try:
        yield
    finally:
        _NATIVE_NORM.reset(token)


class _Float32Norm:
    """Mixin: normalise low-precision (bf16, float16) activations in float32 and hand back
    the input's dtype. vmap + bf16 autocast + BatchNorm fails in the backward pass on CUDA
    ("Expected running_mean to have type BFloat16 but got Float"); float32 inside the
    stacked model avoids it. float32 and float64 activations are normalised as they are (a
    float64 model has float64 statistics)."""

    def forward(self, x: Tensor) -> Tensor:
        if _NATIVE_NORM.get() or x.dtype in (torch.float32, torch.float64):
            return super().forward(x)  # type: ignore[misc]
        return super().forward(x.float()).to(x.dtype)  # type: ignore[misc]


class BatchNorm1d(_Float32Norm, nn.BatchNorm1d):
    pass


class BatchNorm2d(_Float32Norm, nn.BatchNorm2d):
    pass


class MLP(nn.Module):
    """Flatten -> depth x [Linear(width) (-> BatchNorm1d) -> ReLU] -> Linear(num_classes)."""

    def __init__(
        self, in_features: int, num_classes: int, width: int, depth: int, batch_norm: bool
    ):
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = in_features
        for _ in range(depth):
            layers.append(nn.Linear(fan_in, width))
            if batch_norm:
                layers.append(BatchNorm1d(width))
            layers.append(nn.ReLU())
            fan_in = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        x = x.flatten(1)
        if not x.is_floating_point():  # token ids (data=modular, parity) read as numbers
            x = x.to(self.head.weight.dtype)
        h = self.body(x)  # (N, width)
        return h if features else self.head(h)


def _conv_block(
    c_in: int, c_out: int, batch_norm: bool, bias: bool | None = None
) -> list[nn.Module]:
    """3x3 conv (bias only without BN unless ``bias`` says otherwise) (-> BN) -> ReLU."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm if bias is None else bias)
    return [conv, BatchNorm2d(c_out), nn.ReLU()] if batch_norm else [conv, nn.ReLU()]


class CNN(nn.Module):
    """Two conv stages (width, 2*width channels), max-pool between, global average pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int, batch_norm: bool):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_block(in_channels, width, batch_norm),
            nn.MaxPool2d(2),
            *_conv_block(width, 2 * width, batch_norm),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        h = self.body(x)  # (N, 2*width)
        return h if features else self.head(h)


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, batch_norm: bool) -> nn.Sequential:
    """Conv (no bias when BN follows) (-> BN): the unit ResNet blocks are made of."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=not batch_norm)
    return nn.Sequential(conv, BatchNorm2d(c_out)) if batch_norm else nn.Sequential(conv)


class BasicBlock(nn.Module):
    """He et al.'s basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)).

    The shortcut is the identity, or a strided 1x1 conv (+ BN) when the shape changes. With
    ``skip=False`` there is no shortcut at all and no projection parameters (Li et al.'s
    "noshort" nets): relu(bn(conv(relu(bn(conv(x)))))).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool, skip: bool):
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, 3, stride, batch_norm)
        self.conv2 = _conv_bn(c_out, c_out, 3, 1, batch_norm)
        self.relu = nn.ReLU()
        self.skip = skip
        if skip and (stride != 1 or c_in != c_out):
            self.shortcut: nn.Module = _conv_bn(c_in, c_out, 1, stride, batch_norm)
        elif skip:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        if self.skip:
            out = out + self.shortcut(x)
        return self.relu(out)


class ResNet18(nn.Module):
    """CIFAR-style ResNet18 (He et al. 2016 as in kuangliu/pytorch-cifar, used by Yang et al.
    2021): 3x3 stem conv (stride 1, no max-pool), four stages of two basic blocks with
    k, 2k, 4k, 8k channels (stride 1, 2, 2, 2), global average pool, linear head. k = 64 is
    the standard net (11,173,962 parameters for 10 classes). Adaptive pooling makes any
    input size work (32x32 CIFAR, 28x28 MNIST, 8x8 digits)."""

    def __init__(
        self, in_channels: int, num_classes: int, width: int, batch_norm: bool, skip: bool
    ):
        super().__init__()
        k = width
        self.stem = nn.Sequential(_conv_bn(in_channels, k, 3, 1, batch_norm), nn.ReLU())
        stages: list[nn.Module] = []
        c_in = k
        for i, c_out in enumerate((k, 2 * k, 4 * k, 8 * k)):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    BasicBlock(c_in, c_out, stride, batch_norm, skip),
                    BasicBlock(c_out, c_out, 1, batch_norm, skip),
                )
            )
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8 * k, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        h = self.pool(self.stages(self.stem(x)))  # (N, 8k)
        return h if features else self.head(h)


class VGG9(nn.Module):
    """Li et al. (2018)'s VGG-9 (tomgoldstein/loss-landscape ``cifar10/models/vgg.py``) with
    conv widths scaled by k (k = 64 is theirs): conv [k, k, M, 2k, 2k, M, 4k, 4k, 4k, M], each
    conv 3x3 with bias (-> BN) -> ReLU, max-pools 2x2 with ceil_mode; then
    Linear(4k * s * s, 4k) (-> BatchNorm1d) -> ReLU and Linear(4k, num_classes): 7 conv + 2
    linear layers. s is the spatial size after the three pools (4 for 32x32 and 28x28 inputs,
    1 for 8x8), so the 32x32 net is exactly theirs. Conv biases are kept under BN, as in the
    reference. ``features`` is the 4k-dim output of the hidden linear layer."""

    def __init__(
        self,
        in_channels: int,
        spatial: tuple[int, int],
        num_classes: int,
        width: int,
        batch_norm: bool,
    ):
        super().__init__()
        k = width
        layers: list[nn.Module] = []
        c_in = in_channels
        h, w = spatial
        for stage in ((k, k), (2 * k, 2 * k), (4 * k, 4 * k, 4 * k)):
            for c_out in stage:
                layers += _conv_block(c_in, c_out, batch_norm, bias=True)
                c_in = c_out
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.body = nn.Sequential(*layers, nn.Flatten())
        fc: list[nn.Module] = [nn.Linear(4 * k * h * w, 4 * k)]
        if batch_norm:
            fc.append(BatchNorm1d(4 * k))
        self.fc = nn.Sequential(*fc, nn.ReLU())
        self.head = nn.Linear(4 * k, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        h = self.fc(self.body(x))  # (N, 4k)
        return h if features else self.head(h)


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dim written out in elementary ops. PyTorch's fused kernel
    gets second derivatives wrong under vmapped forward mode (``torch.func.hessian`` and
    vmapped Hessian-vector products of a transformer differed from the exact Hessian by
    O(0.1) in the rows of the LayerNorm weights, torch 2.14 CPU); these ops do not."""

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(-1, keepdim=True)  # (..., 1)
        var = (x - mu).square().mean(-1, keepdim=True)  # biased, as nn.LayerNorm
        return (x - mu) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class Attention(nn.Module):
    """Multi-head self-attention written out as matmul + softmax (no mask: every position
    sees every other). Not ``F.scaled_dot_product_attention``: on a CPU its fused kernel has
    no forward-mode derivative and no vmap rule, so Hessian-vector products would fail."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        H = self.heads
        q, k, v = self.qkv(x).split(C, dim=-1)  # (B, T, C) each
        q = q.reshape(B, T, H, C // H).transpose(1, 2)  # (B, H, T, C/H)
        k = k.reshape(B, T, H, C // H).transpose(1, 2)
        v = v.reshape(B, T, H, C // H).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)  # (B, H, T, T)
        att = att.softmax(dim=-1)
        out = (att @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(out)


class Block(nn.Module):
    """Pre-LayerNorm block: x + attn(ln(x)), then x + mlp(ln(x)) with a GELU MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln2 = LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))  # (B, T, C)
        return x + self.mlp(self.ln2(x))  # (B, T, C)


class Transformer(nn.Module):
    """A pre-LayerNorm transformer classifier: token (``vocab`` > 0, inputs (B, T) int64) or
    patch (images (B, C, H, W) cut into ``patch`` x ``patch`` patches, a linear patch
    embedding: a ViT) embeddings plus learned position embeddings, ``depth`` blocks, a final
    LayerNorm and a linear readout at the last position. No BatchNorm and no dropout (dropout
    under vmap would need per-member randomness; the model has none, so a packed member and
    the same model alone compute the same function)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        vocab: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: int,
        patch: int,
    ):
        super().__init__()
        self.vocab = vocab
        self.patch = patch
        if vocab:
            (T,) = input_shape
            self.embed: nn.Module = nn.Embedding(vocab, width)
        else:
            c, h, w = input_shape
            T = (h // patch) * (w // patch)
            self.embed = nn.Linear(c * patch * patch, width)
        self.pos = nn.Parameter(0.02 * torch.randn(T, width))
        self.blocks = nn.Sequential(*(Block(width, heads, mlp_ratio) for _ in range(depth)))
        self.ln = LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def _patches(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        p = self.patch
        x = x.reshape(B, C, H // p, p, W // p, p).permute(
            0, 2, 4, 1, 3, 5
        )  # (B, H/p, W/p, C, p, p)
        return x.reshape(B, (H // p) * (W // p), C * p * p)  # (B, T, C*p*p)

    def forward(self, x: Tensor, features: bool = False) -> Tensor:
        tokens = x if self.vocab else self._patches(x)
        h = self.embed(tokens) + self.pos  # (B, T, width)
        h = self.ln(self.blocks(h))[:, -1]  # (B, width): the last position
        return h if features else self.head(h)


def _mlp(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    in_features = math.prod(input_shape)
    return MLP(in_features, num_classes, spec.width, spec.depth, spec.batch_norm)


def _image_channels(spec: ModelSpec, input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.name={spec.name} needs image inputs of shape (C, H, W), got {tuple(input_shape)}; "
            "use model=mlp for vector data"
        )
    return input_shape[0]


def _cnn(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return CNN(_image_channels(spec, input_shape), num_classes, spec.width, spec.batch_norm)


def _resnet18(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    skip = getattr(spec, "skip", True)
    return ResNet18(
        _image_channels(spec, input_shape), num_classes, spec.width, spec.batch_norm, skip
    )


def _vgg9(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels = _image_channels(spec, input_shape)
    return VGG9(
        channels, (input_shape[1], input_shape[2]), num_classes, spec.width, spec.batch_norm
    )


def _transformer(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, vocab: int):
    if spec.batch_norm:
        raise ConfigError(
            "model.batch_norm must be false for model.name=transformer, got True "
            "(it normalises with LayerNorm)"
        )
    if spec.width % spec.heads:
        raise ConfigError(f"model.heads must divide model.width={spec.width}, got {spec.heads}")
    if vocab and len(input_shape) != 1:
        raise ConfigError(
            f"model.name=transformer needs token inputs of shape (T,), got {tuple(input_shape)}"
        )
    if not vocab:
        _image_channels(spec, input_shape)
        if input_shape[1] % spec.patch or input_shape[2] % spec.patch:
            raise ConfigError(
                f"model.patch must divide the image side {input_shape[1]}x{input_shape[2]}, "
                f"got {spec.patch}"
            )
    return Transformer(
        input_shape,
        num_classes,
        vocab,
        spec.width,
        spec.depth,
        spec.heads,
        spec.mlp_ratio,
        spec.patch,
    )


MODELS: dict[str, Callable[[ModelSpec, tuple[int, ...], int], nn.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet18": _resnet18,
    "vgg9": _vgg9,
}
# families that read token ids (vocab > 0); the others refuse them
TOKEN_MODELS = {"transformer": _transformer}


def build_model(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, vocab: int = 0
) -> nn.Module:
    """The model ``spec`` names for inputs of ``input_shape`` (int64 token ids in [0, vocab)
    when ``vocab`` > 0, else floats) and ``num_classes`` classes."""
    if spec.name in TOKEN_MODELS:
        return TOKEN_MODELS[spec.name](spec, tuple(input_shape), num_classes, vocab)
    if spec.name not in MODELS:
        raise ConfigError(
            f"model.name must be one of {', '.join(sorted(MODELS | TOKEN_MODELS))}, got {spec.name!r}"
        )
    if vocab and spec.name != "mlp":  # an MLP reads token ids as numbers (parity's bits)
        raise ConfigError(
            f"model.name={spec.name} reads images, got token data (vocab {vocab}); "
            "use model=transformer (or model=mlp, which reads the ids as numbers)"
        )
    return MODELS[spec.name](spec, tuple(input_shape), num_classes)


@functools.lru_cache(maxsize=4096)
def model_forward_flops(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, vocab: int = 0
) -> float:
    """Forward FLOPs of one example, two per multiply-accumulate of every matrix product and
    convolution, as ``torch.utils.flop_counter`` counts them (a test holds the two equal for
    every model of the zoo): counted by forward hooks on the layers that do them (``nn.Linear``,
    ``nn.Conv2d``, :class:`Attention`'s two products) during a pass that computes nothing of
    use (:func:`landscape.functional.probe_device`). Not the counter itself: its first use
    imports torch's compiler stack (about 0.9 s, in every driver). A model whose work this
    cannot see counts its parameter count. Token data (``vocab`` > 0) is fed as int64 ids."""
    with torch.device("meta"):
        model = build_model(spec, input_shape, num_classes, vocab).eval()  # BN takes 1 example
    probe, device = probe_device(model)
    total = 0

    def count(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features
        elif isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += 2 * output.numel() * per_output
        else:  # Attention: (q k^T) and (att v), each 2 B H T^2 (C / H) = 2 B T^2 C
            B, T, C = inputs[0].shape
            total += 4 * B * T * T * C

    kinds = (nn.Linear, nn.Conv2d, Attention)
    handles = [m.register_forward_hook(count) for m in probe.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            probe(example_input(probe, input_shape, 1, device))
    finally:
        for h in handles:
            h.remove()
    return max(float(total), float(sum(p.numel() for p in model.parameters())))
