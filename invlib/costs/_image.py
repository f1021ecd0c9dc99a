"""What a training step of the image classifiers of :mod:`invlib.image_nets` keeps for backward.

Counted per image, in elements, from the shapes alone: every tensor that autograd saves between
the forward and the backward (plain PyTorch, these modules, CPU or GPU alike), each counted once
however many nodes save it. The rules, for a branch in pre-activation order whose input ``x``
has ``a`` elements:

* batch norm saves its input; a ReLU saves its output (which the convolution after it saves
  as its input); a convolution that reads ``x`` directly saves ``x``;
* a basic branch (BN, ReLU, 3x3, BN, ReLU, 3x3) therefore keeps ``x``, ``relu(bn(x))`` and,
  at the output resolution, the first convolution's output and its ``relu(bn(.))``:
  ``2 a + 2 m``, with ``m`` the first convolution's output size; a bottleneck keeps
  ``2 a + 2 m1 + 2 m2`` (1x1 output at the input resolution, 3x3 output at the output one);
  the network's first block, whose input is the stem's ReLU output (kept by the stem), drops
  the leading ``2 a`` to ``0`` (it starts at the convolution);
* a projection shortcut (strided 1x1 convolution, batch norm) adds its convolution's output;
  the sum ``branch(x) + shortcut(x)`` saves nothing and is the next block's ``x``;
* the stem keeps its convolution's output (batch norm's input) and its ReLU output; the head
  keeps the last activation, its ReLU output, the pooled vector, and the logits and their
  log-softmax for the cross-entropy loss;
* an :class:`~invlib.InvertibleSequential` keeps nothing of its own: its output is the next
  block's (or the head's) ``x``, already counted, and its input is rebuilt in backward. In a
  RevNet only the stem, the transitions and the head keep activations; in the i-RevNet only
  the head does, on a tensor of the input image's size.

Batch norm's per-channel statistics (saved mean and inverse deviation) and what
:class:`~invlib.InvertibleSequential` records per layer (copies of the batch-norm buffers, to
replay them) do not grow with the batch: :attr:`ImageMemory.constant` counts them, in float32
bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ImageMemory", "image_memory"]


@dataclass(frozen=True)
class ImageMemory:
    """Elements kept per image, by part of the network, and ``constant`` bytes that do not grow
    with the batch (batch norm's saved statistics, and the buffer copies an
    :class:`~invlib.InvertibleSequential` records to replay its batch norms)."""

    stem: int
    stages: tuple[int, int, int]
    head: int
    constant: int = 0

    @property
    def per_image(self) -> int:
        return self.stem + sum(self.stages) + self.head

    def bytes(self, batch: int, element_size: int = 4) -> int:
        """Bytes kept by a step at ``batch`` in a dtype of ``element_size`` bytes (float32: 4)."""
        return self.per_image * batch * element_size + self.constant * element_size // 4


def _branch(a: int, m1: int, m2: int | None, first: bool) -> int:
    """Kept by a pre-activation branch: ``m1`` (and ``m2`` for a bottleneck) as in the module doc."""
    kept = 0 if first else 2 * a
    return kept + 2 * m1 + (0 if m2 is None else 2 * m2)


def _norms(cin: int, width: int, bottleneck: bool, first: bool) -> list[int]:
    """Channels of each batch norm of a pre-activation branch."""
    return ([] if first else [cin]) + [width] * (2 if bottleneck else 1)


def image_memory(spec, size: int = 32, classes: int = 10) -> ImageMemory:
    """What a training step of ``spec``'s network keeps after its forward and loss: elements per
    image by part, and the batch-independent bytes, in float32 (see the module doc).

    ``spec``: a :class:`invlib.image_nets.Spec` of a ResNet or RevNet, or of an i-RevNet
    (:func:`invlib.image_nets.irevnet_spec`); ``size``: the input's height and width (square,
    divisible by 4, or by 8 for the i-RevNet).
    """
    saved_stats = lambda c: 2 * c * 4  # noqa: E731  batch norm run by autograd: mean, inverse deviation
    replayed = lambda c: 2 * c * 4 + 8  # noqa: E731  running mean and variance, and the batch count
    if spec.kind == "irevnet":
        channels, side = spec.widths[0], size
        constant = 0
        for blocks, hidden in zip(spec.blocks, spec.widths[1:]):
            channels, side = 4 * channels, side // 2
            constant += blocks * 2 * (replayed(channels // 2) + replayed(hidden))
        final = channels * side * side  # three squeezes keep the element count
        return ImageMemory(0, (0, 0, 0), 2 * final + channels + 2 * classes, constant + saved_stats(channels))
    side = size
    stem = 2 * spec.widths[0] * side * side
    constant = saved_stats(spec.widths[0])
    cin = spec.widths[0]
    stages = []
    for s, (blocks, width, stride) in enumerate(zip(spec.blocks, spec.widths[1:], spec.strides)):
        cout = width * spec.expansion
        out_side = side // stride
        a = cin * side * side
        first = s == 0
        projection = stride != 1 or cin != cout
        kept = 0
        couplings = blocks - 1
        if spec.kind == "resnet" or projection:  # an ordinary first block
            if spec.bottleneck:
                kept += _branch(a, width * side * side, width * out_side * out_side, first)
            else:
                kept += _branch(a, width * out_side * out_side, None, first)
            kept += cout * out_side * out_side if projection else 0
            norms = _norms(cin, width, spec.bottleneck, first) + ([cout] if projection else [])
            constant += sum(saved_stats(c) for c in norms)
        else:
            couplings = blocks  # a RevNet stage that starts with a coupling keeps nothing at all
            constant += 2 * sum(replayed(c) for c in _norms(cout // 2, width // 2, spec.bottleneck, first))
            couplings -= 1
        if spec.kind == "resnet":
            b = cout * out_side * out_side
            inner = width * out_side * out_side
            kept += couplings * _branch(b, inner, inner if spec.bottleneck else None, False)
            constant += couplings * sum(saved_stats(c) for c in _norms(cout, width, spec.bottleneck, False))
        else:
            constant += couplings * 2 * sum(replayed(c) for c in _norms(cout // 2, width // 2, spec.bottleneck, False))
        stages.append(kept)
        cin, side = cout, out_side
    final = cin * side * side
    return ImageMemory(stem, tuple(stages), 2 * final + cin + 2 * classes, constant + saved_stats(cin))
