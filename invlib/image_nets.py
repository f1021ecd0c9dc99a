"""CIFAR-sized image classifiers in three forms: ResNet, RevNet, and a fully invertible i-RevNet.

* **ResNet-32/110/164** (He et al. 2016, pre-activation form): a 3x3 stem, three stages of
  residual blocks ``x + S(x)`` at 32x32, 16x16 and 8x8, and a head (batch norm, ReLU, average
  pool, linear). Plain autograd keeps every block's activations.
* **RevNet-38/110/164** (Gomez et al. 2017): the same stages, but every block that keeps its
  shape is an :class:`~invlib.AdditiveCoupling` whose ``F`` and ``G`` are the residual branch at
  half the channels, and the blocks of a stage run in one :class:`~invlib.InvertibleSequential`.
  The first block of a stage changes the shape (stride 2, more channels): it is an ordinary
  residual block with a projection shortcut, not invertible, and autograd keeps its activations.
* **i-RevNet** (Jacobsen et al. 2018): no strided transition at all. A :class:`~invlib.Squeeze2d`
  (space to depth) followed by an :class:`~invlib.InvertibleConv1x1` starts each stage, so
  the whole body from the image to the head is one ``InvertibleSequential`` and keeps one
  activation, the size of the input image, at any depth.

The stage widths, block counts and block bodies follow MemCNN's CIFAR-10 experiments
(``memcnn/config/experiments.json`` and ``memcnn/models/resnet.py`` of memcnn 1.5.2, themselves a
port of Gomez et al.'s code), so parameter counts and memory can be set against MemCNN's table;
:data:`MEMCNN_TABLE` holds that table. Batch norm uses torch's defaults (momentum 0.1, eps 1e-5),
as MemCNN's experiments do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from .conv1x1 import InvertibleConv1x1
from .coupling import AdditiveCoupling
from .sequential import InvertibleSequential
from .squeeze import Squeeze2d

__all__ = ["Spec", "SPECS", "MEMCNN_TABLE", "MEMCNN_BATCH", "METHODS", "PreActBranch", "Residual", "build", "irevnet", "irevnet_spec", "count_parameters",
           "forward_by"]


@dataclass(frozen=True)
class Spec:
    """One network: ``kind`` (``"resnet"``, ``"revnet"`` or ``"irevnet"``), ``bottleneck`` blocks
    (1x1-3x3-1x1 with 4x expansion) or basic ones (3x3-3x3), ``blocks`` per stage, ``widths``
    (the stem's, then each stage's branch width; a bottleneck stage outputs 4x its width), and
    ``strides`` of the stages."""

    kind: str
    bottleneck: bool
    blocks: tuple[int, int, int]
    widths: tuple[int, int, int, int]
    strides: tuple[int, int, int] = (1, 2, 2)

    @property
    def expansion(self) -> int:
        return 4 if self.bottleneck else 1

    def stage_channels(self) -> list[int]:
        return [w * self.expansion for w in self.widths[1:]]

    @property
    def depth(self) -> int:
        """The count of weighted layers (stem, head, and 2 (basic) or 3 (bottleneck) convolutions per block;
        a RevNet block counts those of ``F`` and ``G``; an i-RevNet its 1x1 layers, ``F``, ``G``
        and the head)."""
        if self.kind == "irevnet":  # a 1x1 layer per stage, two 3x3 in each of F and G, the head
            return 3 + 4 * sum(self.blocks) + 1
        convs = 3 if self.bottleneck else 2
        per_block = 2 * convs if self.kind == "revnet" else convs
        return 2 + per_block * sum(self.blocks)


#: The six networks of MemCNN's CIFAR-10 table, as its experiments configure them.
SPECS = {
    "ResNet-32": Spec("resnet", False, (5, 5, 5), (16, 16, 32, 64)),
    "ResNet-110": Spec("resnet", False, (18, 18, 18), (16, 16, 32, 64)),
    "ResNet-164": Spec("resnet", True, (18, 18, 18), (16, 16, 32, 64)),
    "RevNet-38": Spec("revnet", False, (3, 3, 3), (32, 32, 64, 112)),
    "RevNet-110": Spec("revnet", False, (9, 9, 9), (32, 32, 64, 128)),
    "RevNet-164": Spec("revnet", True, (9, 9, 9), (32, 32, 64, 128)),
}

#: MemCNN's published memory table (README.rst, "Memory consumption of model training in PyTorch",
#: and Table 3 of paper/paper.md, repository silvandeleemput/memcnn): parameters, and
#: ``torch.cuda.memory_allocated()`` in MiB read after the forward pass and the loss, before
#: ``backward()``, minus the model's own allocation (``memcnn/trainers/classification.py``), at
#: the experiments' batch of 100 CIFAR-10 images in float32 (``memcnn/config/experiments.json``).
MEMCNN_TABLE: dict[str, dict[str, float]] = {
    "ResNet-32": {"parameters": 466906, "activations_mib": 238.6},
    "ResNet-110": {"parameters": 1730714, "activations_mib": 810.7},
    "ResNet-164": {"parameters": 1704154, "activations_mib": 2452.8},
    "RevNet-38": {"parameters": 573994, "activations_mib": 85.6},
    "RevNet-110": {"parameters": 1854890, "activations_mib": 85.7},
    "RevNet-164": {"parameters": 1983786, "activations_mib": 432.7},
}
#: The batch of MemCNN's CIFAR-10 experiments.
MEMCNN_BATCH = 100


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class PreActBranch(nn.Sequential):
    """A residual branch in pre-activation order, ``(BN, ReLU, conv)`` repeated.

    Basic: 3x3 ``cin -> width`` (stride ``stride``), 3x3 ``width -> width``. Bottleneck: 1x1
    ``cin -> width``, 3x3 ``width -> width`` (stride), 1x1 ``width -> 4 width``. ``first``: the
    first block after the stem, whose input has just been through BN and ReLU, starts at the
    convolution. Zero padding; the ReLUs after a batch norm work in place (they overwrite the
    norm's output, which nothing saves), never on the branch's input.
    """

    def __init__(self, cin: int, width: int, *, stride: int = 1, bottleneck: bool = False,
                 first: bool = False) -> None:
        if bottleneck:
            convs = [_conv(cin, width, 1), _conv(width, width, 3, stride), _conv(width, 4 * width, 1)]
        else:
            convs = [_conv(cin, width, 3, stride), _conv(width, width, 3)]
        layers: list[nn.Module] = []
        for i, conv in enumerate(convs):
            if i or not first:
                layers += [_bn(conv.in_channels), nn.ReLU(inplace=bool(i))]
            layers.append(conv)
        super().__init__(*layers)


class Residual(nn.Module):
    """``y = branch(x) + shortcut(x)``; the shortcut is the identity, or a strided 1x1
    convolution with batch norm where the shape changes (a transition)."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        return out + (x if self.shortcut is None else self.shortcut(x))


def _transition(cin: int, width: int, stride: int, bottleneck: bool, first: bool) -> nn.Module:
    cout = width * (4 if bottleneck else 1)
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = nn.Sequential(_conv(cin, cout, 1, stride), _bn(cout))
    return Residual(PreActBranch(cin, width, stride=stride, bottleneck=bottleneck, first=first), shortcut)


def _stem(channels: int, in_channels: int = 3) -> nn.Sequential:
    return nn.Sequential(_conv(in_channels, channels, 3), _bn(channels), nn.ReLU())


def _head(channels: int, classes: int) -> nn.Sequential:
    return nn.Sequential(_bn(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def build(spec: Spec | str, classes: int = 10, *, seed: int = 0, in_channels: int = 3) -> nn.Sequential:
    """The ResNet or RevNet of ``spec`` (a :class:`Spec` or a key of :data:`SPECS`):
    ``nn.Sequential(stem, stage 1, stage 2, stage 3, head)``, each stage an ``nn.Sequential``.

    In a RevNet stage, the blocks after a shape-changing first block are one
    :class:`~invlib.InvertibleSequential` of couplings; a first block that keeps the shape is
    a coupling too (RevNet-38 and -110's first stage is entirely invertible).
    """
    spec = SPECS[spec] if isinstance(spec, str) else spec
    if spec.kind not in ("resnet", "revnet"):
        raise ValueError(f"build: spec.kind must be 'resnet' or 'revnet', got {spec.kind!r}; use irevnet() "
                         "for the fully invertible model")
    torch.manual_seed(seed)
    cin = spec.widths[0]
    stages = []
    for s, (blocks, width, stride) in enumerate(zip(spec.blocks, spec.widths[1:], spec.strides)):
        cout, first = width * spec.expansion, s == 0
        if spec.kind == "resnet":
            stages.append(nn.Sequential(_transition(cin, width, stride, spec.bottleneck, first),
                                        *(_transition(cout, width, 1, spec.bottleneck, False)
                                          for _ in range(1, blocks))))
        else:
            rest = [_coupling(cout, width, spec.bottleneck) for _ in range(1, blocks)]
            if stride == 1 and cin == cout:  # the shape holds: the first block is a coupling too
                stages.append(nn.Sequential(InvertibleSequential(
                    _coupling(cout, width, spec.bottleneck, first=first), *rest)))
            else:
                stages.append(nn.Sequential(_transition(cin, width, stride, spec.bottleneck, first),
                                            InvertibleSequential(*rest)))
        cin = cout
    return nn.Sequential(_stem(spec.widths[0], in_channels), *stages, _head(cin, classes))


def _coupling(channels: int, width: int, bottleneck: bool, first: bool = False) -> AdditiveCoupling:
    """A RevNet block: ``F`` and ``G`` are the residual branch at half the channels and width."""
    half = channels // 2
    branch = lambda: PreActBranch(half, width // 2, bottleneck=bottleneck, first=first)  # noqa: E731
    return AdditiveCoupling(branch(), branch())


class _Branch(nn.Sequential):
    """i-RevNet's ``F`` and ``G``: BN, ReLU, 3x3 ``c -> hidden``, BN, ReLU, 3x3 ``hidden -> c``."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__(_bn(channels), nn.ReLU(), _conv(channels, hidden, 3), _bn(hidden), nn.ReLU(inplace=True),
                         _conv(hidden, channels, 3))


def irevnet(blocks: int | tuple[int, int, int] = 3, hidden: tuple[int, int, int] = (32, 64, 128),
            classes: int = 10, *, in_channels: int = 3, seed: int = 0) -> nn.Sequential:
    """A fully invertible body and an ordinary head: ``nn.Sequential(body, head)``.

    ``body`` is one :class:`~invlib.InvertibleSequential`: three stages, each
    ``Squeeze2d``, ``InvertibleConv1x1`` (mixes the squeezed channels), then ``blocks`` couplings
    whose ``F`` and ``G`` are ``BN, ReLU, 3x3 conv (hidden[s] channels), BN, ReLU, 3x3 conv``. A ``3 x 32 x 32``
    image becomes ``12 x 16 x 16``, ``48 x 8 x 8`` and ``192 x 4 x 4``: every activation holds
    exactly the image's 3072 numbers, and the forward keeps only the body's output for the head.
    ``in_channels * 4`` must be even, which holds for any number of input channels.
    """
    blocks = (blocks,) * 3 if isinstance(blocks, int) else tuple(blocks)
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    channels = in_channels
    for n, width in zip(blocks, hidden):
        channels *= 4
        layers += [Squeeze2d(2), InvertibleConv1x1(channels)]
        layers += [AdditiveCoupling(_Branch(channels // 2, width), _Branch(channels // 2, width)) for _ in range(n)]
    return nn.Sequential(InvertibleSequential(*layers), _head(channels, classes))


def irevnet_spec(blocks: int | tuple[int, int, int] = 3, hidden: tuple[int, int, int] = (32, 64, 128),
                 in_channels: int = 3) -> Spec:
    """The :class:`Spec` of :func:`irevnet`'s network, for :func:`invlib.costs.image_memory`:
    ``widths`` holds the input channels, then the hidden width of each stage."""
    blocks = (blocks,) * 3 if isinstance(blocks, int) else tuple(blocks)
    return Spec("irevnet", False, blocks, (in_channels, *hidden))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (batch-norm scales and shifts included, running statistics not)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


METHODS = ("invertible", "plain", "checkpoint")


def forward_by(model: nn.Module, method: str = "invertible"):
    """``x -> model(x)`` with every :class:`~invlib.InvertibleSequential` inside ``model``
    differentiated by ``method``, the rest by autograd as usual:

    * ``"invertible"``: as built (keeps the stack's output, rebuilds the rest in backward);
    * ``"plain"``: its layers in a plain loop (autograd keeps what every layer saves);
    * ``"checkpoint"``: ``torch.utils.checkpoint.checkpoint_sequential`` over its layers with
      ``round(sqrt(n))`` segments, non-reentrant.

    The layers are shared, so the three compute the same function with the same weights.
    ``model`` is walked through nested ``nn.Sequential`` containers, which run in order.
    """
    if method not in METHODS:
        raise ValueError(f"forward_by: method must be one of {METHODS}, got {method!r}")

    def run(module: nn.Module, x: Tensor) -> Tensor:
        if isinstance(module, InvertibleSequential) and method != "invertible":
            layers = list(module)
            if method == "plain":
                for layer in layers:
                    x = layer(x)
                return x
            segments = max(1, round(len(layers) ** 0.5))
            return torch.utils.checkpoint.checkpoint_sequential(nn.Sequential(*layers), segments, x,
                                                                use_reentrant=False)
        if type(module) is nn.Sequential:
            for child in module:
                x = run(child, x)
            return x
        return module(x)

    return lambda x: run(model, x)
