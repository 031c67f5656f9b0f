"""BiT ResNet-v2 in Flax linen: weight-standardised convolutions, GroupNorm, pre-activation.

The module tree mirrors the official BiT checkpoints (``BiT-M-R50x1.npz``) so that loading one
is an identity map on names::

    root_block/standardized_conv2d/kernel             7x7/2 stem (HWIO)
    block{1..4}/unit{01..}/{a,b,c}/group_norm/{gamma,beta}
    block{1..4}/unit{01..}/{a,b,c}/standardized_conv2d/kernel
    block{1..4}/unit01/a/proj/standardized_conv2d/kernel   (projection shortcut)
    group_norm/{gamma,beta}                           final pre-head norm
    head/conv2d/{kernel,bias}                         1x1 conv classifier, kernel (1, 1, C, K)

Numerics follow the reference PyTorch model (and timm's ``resnetv2_*_bit``) rather than flax's
defaults, because parity with released checkpoints depends on them:

* convolutions pad symmetrically (flax "SAME" pads stride-2 convs asymmetrically);
* the stem pads with zeros and max-pools VALID (flax's padded max-pool pads with -inf);
* GroupNorm uses epsilon 1e-5 and the two-pass variance, always in float32;
* weight standardisation uses epsilon 1e-10 over each output filter.

Inputs are NHWC floats in [-1, 1]; outputs are logits (or pre-logit features).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any

GN_EPSILON = 1e-5
WS_EPSILON = 1e-10


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Depth and width of a BiT ResNet-v2: units per block and the width multiplier."""

    block_units: tuple[int, ...]
    width: float

    @property
    def depth(self) -> int:
        return 3 * sum(self.block_units) + 2

    @property
    def tag(self) -> str:
        width = f"{self.width:g}"
        return f"R{self.depth}x{width}"


_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

# The 12 released variants: BiT-S (ImageNet-1k, 1000 classes) and BiT-M (ImageNet-21k, 21843).
PUBLISHED = {
    f"BiT-{family}-R{depth}x{width}": Architecture(_DEPTHS[depth], width)
    for family in ("S", "M")
    for depth, width in ((50, 1), (50, 3), (101, 1), (101, 3), (152, 2), (152, 4))
}
# Small variants for tests and CPU demos (no released weights). Width 0.5 keeps every layer a
# multiple of the 32 GroupNorm groups.
SMALL = {
    "BiT-R26x1": Architecture((2, 2, 2, 2), 1),
    "BiT-R26x0.5": Architecture((2, 2, 2, 2), 0.5),
    "BiT-R14x0.5": Architecture((1, 1, 1, 1), 0.5),
}
VARIANTS: dict[str, Architecture] = {
    **PUBLISHED,
    # Architecture-only aliases of the published variants, for models trained from scratch.
    **{f"BiT-R{d}x{w}": Architecture(_DEPTHS[d], w)
       for d, w in ((50, 1), (50, 3), (101, 1), (101, 3), (152, 2), (152, 4))},
    **SMALL,
}
PUBLISHED_NUM_CLASSES = {"S": 1000, "M": 21843}


def published_tag(name: str) -> str:
    """The ``pretrained_model`` name of results from a released BiT (``bit_m_r50x1``): its own
    name, never the paper's ImageNet pre-trainings' (``imagenet21k_bit50x1``), which it is not."""
    return name.lower().replace("-", "_")


def architecture(name: str) -> Architecture:
    """Returns the architecture of a variant name, e.g. ``"BiT-M-R50x1"`` or ``"BiT-R26x0.5"``."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"Unknown BiT variant {name!r}; valid names: {', '.join(VARIANTS)}") from None


def standardize(kernel: Array, eps: float = WS_EPSILON) -> Array:
    """Weight standardisation: zero mean, unit variance per output filter (last axis, HWIO).

    Its ops carry the name ``weight_standardization`` in compiled programs (profiles, tests).
    """
    with jax.named_scope("weight_standardization"):
        return _standardize(kernel, eps)


def _standardize(kernel: Array, eps: float) -> Array:
    flat = kernel.astype(jnp.float32).reshape(-1, kernel.shape[-1])
    # The per-filter means are written as (1, N) @ (N, O) products: XLA:CPU compiles the
    # equivalent column reductions (and their gradients) into slow strided loops, which made
    # a whole R50 train step 3x slower. HIGHEST keeps the statistics in full float32 where
    # the default would allow TF32 / bfloat16 passes (GPU, TPU).
    averager = jnp.full((1, flat.shape[0]), 1.0 / flat.shape[0], jnp.float32)
    mean = jnp.dot(averager, flat, precision=jax.lax.Precision.HIGHEST)
    centred = flat - mean
    var = jnp.dot(averager, jnp.square(centred), precision=jax.lax.Precision.HIGHEST)
    return (centred * jax.lax.rsqrt(var + eps)).reshape(kernel.shape)


def standardize_params(params: Any) -> Any:
    """``params`` with every StdConv kernel (``.../standardized_conv2d/kernel``) standardised.

    Applied with ``BiT(..., standardize_weights=False)`` this is the same function of the
    parameters as the plain model; taking it out of the model lets a step standardise (and
    back-propagate through the standardisation) once, however many micro-batches it runs.
    """
    def visit(path, leaf):
        names = [getattr(k, "key", None) for k in path]
        return standardize(leaf) if names[-2:] == ["standardized_conv2d", "kernel"] else leaf
    return jax.tree_util.tree_map_with_path(visit, params)


# PyTorch's default conv init (kaiming_uniform with a=sqrt(5)), i.e. U(-1/sqrt(fan_in), ..).
# The scale of raw weights matters despite standardisation: AGC clips relative to it.
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Callable:
    """PyTorch's default conv/linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype,
                                                                    -bound, bound)


# How a classifier head starts. ``reference``: a fresh ``torch.nn.Conv2d(C, K, 1, bias=True)``
# with PyTorch's default init, which the paper's code puts on every transferred model
# (SLAMPAI/large-scale-pretraining-transfer, transfer_learning/models/builder.py,
# ``load_from_checkpoint``) and on models built from scratch; ``zero``: BiT's own transfer
# recipe (google-research/big_transfer), kernel and bias zero.
HEAD_INITS = ("reference", "zero")


class StdConv(nn.Module):
    """Bias-free convolution with standardised weights and symmetric padding (k - 1) // 2.

    ``standardize_weights=False``: the kernel parameter is already standardised (see
    ``standardize_params``) and is used as it is.
    """

    features: int
    kernel_size: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    standardize_weights: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel_size
        kernel = self.param("kernel", torch_default_init, (k, k, x.shape[-1], self.features),
                            jnp.float32)
        pad = (k - 1) // 2
        if self.standardize_weights:
            kernel = standardize(kernel)
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding=((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


class GroupNorm(nn.Module):
    """GroupNorm with PyTorch's numerics (eps 1e-5, two-pass variance), statistics in float32."""

    groups: int = 32
    epsilon: float = GN_EPSILON
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = x.shape[-1]
        if channels % self.groups:
            raise ValueError(f"{channels} channels cannot be split into {self.groups} groups")
        gamma = self.param("gamma", nn.initializers.ones, (channels,), jnp.float32)
        beta = self.param("beta", nn.initializers.zeros, (channels,), jnp.float32)
        grouped = x.astype(jnp.float32).reshape(
            x.shape[:-1] + (self.groups, channels // self.groups))
        axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)  # spatial axes and channels in a group
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
        normed = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        return (normed * gamma + beta).astype(self.dtype)


class _Projection(nn.Module):
    """The 1x1 shortcut conv; its own scope so its parameter reads ``a/proj/standardized_conv2d``."""

    features: int
    stride: int
    dtype: Dtype
    standardize_weights: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return StdConv(self.features, 1, self.stride, self.dtype, self.standardize_weights,
                       name="standardized_conv2d")(x)


class _NormActConv(nn.Module):
    """One pre-activation step of a unit: GroupNorm -> ReLU -> StdConv (BiT's a, b and c)."""

    features: int
    kernel_size: int
    stride: int = 1
    projection: int = 0  # output channels of the shortcut projection, 0 for none (only in 'a')
    projection_stride: int = 1
    dtype: Dtype = jnp.float32
    standardize_weights: bool = True

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array | None]:
        x = nn.relu(GroupNorm(dtype=self.dtype, name="group_norm")(x))
        # The shortcut projection reads the pre-activated input, as in BiT's PreActBottleneck.
        shortcut = None
        if self.projection:
            shortcut = _Projection(self.projection, self.projection_stride, self.dtype,
                                   self.standardize_weights, name="proj")(x)
        y = StdConv(self.features, self.kernel_size, self.stride, self.dtype,
                    self.standardize_weights, name="standardized_conv2d")(x)
        return y, shortcut


class PreActBottleneck(nn.Module):
    """ResNet-v2 bottleneck: 1x1 -> 3x3 (carries the stride) -> 1x1, plus the shortcut."""

    features: int  # output channels; the bottleneck is features // 4 wide
    stride: int = 1
    dtype: Dtype = jnp.float32
    standardize_weights: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        mid = self.features // 4
        needs_projection = self.stride != 1 or x.shape[-1] != self.features
        ws = dict(dtype=self.dtype, standardize_weights=self.standardize_weights)
        y, shortcut = _NormActConv(mid, 1, projection=self.features if needs_projection else 0,
                                   projection_stride=self.stride, name="a", **ws)(x)
        y, _ = _NormActConv(mid, 3, self.stride, name="b", **ws)(y)
        y, _ = _NormActConv(self.features, 1, name="c", **ws)(y)
        return y + (x.astype(y.dtype) if shortcut is None else shortcut)


class _RootBlock(nn.Module):
    """Stem: 7x7/2 conv, zero pad 1, 3x3/2 VALID max-pool."""

    features: int
    dtype: Dtype
    standardize_weights: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = StdConv(self.features, 7, 2, self.dtype, self.standardize_weights,
                    name="standardized_conv2d")(x)
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Block(nn.Module):
    units: int
    features: int
    stride: int
    remat: bool
    dtype: Dtype
    standardize_weights: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        unit_cls = nn.remat(PreActBottleneck) if self.remat else PreActBottleneck
        for i in range(self.units):
            x = unit_cls(self.features, self.stride if i == 0 else 1, self.dtype,
                         self.standardize_weights, name=f"unit{i + 1:02d}")(x)
        return x


class _Conv1x1(nn.Module):
    """A 1x1 conv with bias on pooled features, i.e. a dense layer with a (1, 1, C, K) kernel."""

    num_classes: int
    head_init: str
    dtype: Dtype

    @nn.compact
    def __call__(self, features: Array) -> Array:
        fan_in = features.shape[-1]
        if self.head_init == "zero":
            kernel_init = bias_init = nn.initializers.zeros
        else:
            kernel_init, bias_init = torch_default_init, torch_default_bias_init(fan_in)
        kernel = self.param("kernel", kernel_init, (1, 1, fan_in, self.num_classes), jnp.float32)
        bias = self.param("bias", bias_init, (self.num_classes,), jnp.float32)
        logits = features.astype(self.dtype) @ kernel[0, 0].astype(self.dtype)
        return logits + bias.astype(self.dtype)


class _Head(nn.Module):
    """The classifier scope, so its parameters read ``head/conv2d/{kernel,bias}`` as in BiT."""

    num_classes: int
    head_init: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Array) -> Array:
        return _Conv1x1(self.num_classes, self.head_init, self.dtype, name="conv2d")(features)


class BiT(nn.Module):
    """BiT ResNet-v2.

    Attributes:
      block_units: units in each of the four blocks, e.g. (3, 4, 6, 3) for R50.
      width: width multiplier (the ``x1``..``x4`` of the names).
      num_classes: size of the classifier head.
      head_init: how ``init`` draws the classifier head, one of ``HEAD_INITS``: ``reference``
        (PyTorch's default, as the paper's code) or ``zero`` (BiT's transfer recipe).
      dtype: compute dtype (``jnp.bfloat16`` on accelerators); parameters stay float32 and
        GroupNorm statistics are computed in float32.
      remat: recompute each unit's activations in the backward pass to save memory.
      standardize_weights: False when the conv kernels in ``params`` are already standardised
        (``standardize_params``): the train step standardises once per optimiser step, outside
        its micro-batch loop, and applies the model with this False.
    """

    block_units: tuple[int, ...]
    width: float
    num_classes: int
    head_init: str = "reference"
    dtype: Dtype = jnp.float32
    remat: bool = False
    standardize_weights: bool = True

    @nn.compact
    def __call__(self, images: Array, *, pre_logits: bool = False) -> Array:
        """Maps NHWC images in [-1, 1] to logits [N, num_classes], or features [N, C]."""
        if images.ndim != 4:
            raise ValueError(f"BiT expects NHWC images, got shape {images.shape}")
        base = int(64 * self.width)
        x = _RootBlock(base, self.dtype, self.standardize_weights, name="root_block")(images)
        for i, units in enumerate(self.block_units):
            x = _Block(units, base * 4 * 2**i, 1 if i == 0 else 2, self.remat, self.dtype,
                       self.standardize_weights, name=f"block{i + 1}")(x)
        x = nn.relu(GroupNorm(dtype=self.dtype, name="group_norm")(x))
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if pre_logits:
            return features
        return _Head(self.num_classes, self.head_init, self.dtype, name="head")(features)

    @property
    def architecture(self) -> Architecture:
        return Architecture(tuple(self.block_units), self.width)


def create_model(name: str, num_classes: int, **options) -> BiT:
    """Creates a BiT module by variant name.

    Args:
      name: one of ``VARIANTS`` (``BiT-{S,M}-R{50x1,...,152x4}``, ``BiT-R50x1``-style aliases
        without released weights, and small test variants such as ``BiT-R26x0.5``).
      num_classes: classifier size.
      **options: ``head_init``, ``dtype``, ``remat`` (see :class:`BiT`).

    Returns:
      A Flax module; ``module.init(rng, images)`` / ``module.apply(variables, images)`` with
      NHWC float images in [-1, 1].
    """
    arch = architecture(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    valid = {"head_init", "dtype", "remat"}
    unknown = set(options) - valid
    if unknown:
        raise TypeError(f"Unknown option(s) {sorted(unknown)}; valid: {sorted(valid)}")
    check_head_init(options.get("head_init", "reference"))
    return BiT(block_units=arch.block_units, width=arch.width, num_classes=num_classes,
               **options)


def check_head_init(head_init: str) -> str:
    """``head_init`` if it is one of ``HEAD_INITS``, else a ValueError listing them."""
    if head_init not in HEAD_INITS:
        raise ValueError(f"unknown head_init {head_init!r}; valid: {', '.join(HEAD_INITS)}")
    return head_init


def new_head(num_features: int, num_classes: int, head_init: str, seed: int) -> dict:
    """Fresh ``head`` parameters (``{"conv2d": {"kernel", "bias"}}``) drawn from ``seed``.

    The same initialisers as ``BiT.init`` uses for its head, so a transferred model starts
    like a model built with ``head_init`` for the target.
    """
    head = _Head(num_classes, check_head_init(head_init))
    variables = head.init(jax.random.key(seed), jnp.zeros((1, num_features), jnp.float32))
    return jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(variables["params"]))


def param_shapes(model: BiT, image_size: int = 32) -> dict:
    """Parameter shapes of ``model`` as a tree of ShapeDtypeStructs, allocating nothing."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), images)["params"]


def num_params(model: BiT) -> int:
    """Number of parameters of ``model``, computed from shapes only."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(param_shapes(model)))
