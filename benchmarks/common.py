"""Shared pieces of the benchmark scripts: the nets, the command line, the table and the JSON.

The measuring itself lives in :mod:`invlib.compare` (``compare_methods``), so chapters and
scripts report the same quantities.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch
from torch import Tensor, nn

import invlib
from invlib.compare import METHODS, compare_methods

NETS = ("coupling", "dense", "conv1d", "conv2d")
MIB = 2**20


def build(net: str, depth: int, width: int, batch: int, channels: int | None,
          device: torch.device) -> tuple[list[nn.Module], Tensor]:
    """Layers of ``net`` at ``depth`` and an input batch that requires grad.

    ``width`` is the number of features per sample: ``coupling`` and ``dense`` take
    ``(batch, width)``; ``conv1d`` takes ``(batch, C, width // C)``; ``conv2d`` takes
    ``(batch, C, S, S)`` with ``C * S * S == width``.
    """
    if net == "coupling":
        half = width // 2

        def sub() -> nn.Module:
            return nn.Sequential(nn.Linear(half, half, device=device), nn.LeakyReLU())

        layers = [invlib.AdditiveCoupling(sub(), sub()) for _ in range(depth)]
        shape = (batch, width)
    elif net == "dense":
        # A moderate slope keeps the inverse's 1/slope gain, compounded over depth, from
        # driving values into denormals or inf, which would distort the timings.
        layers = [m for _ in range(depth) for m in (invlib.InvertibleLinear(width),
                                                    invlib.LeakyReLU(0.5))]
        shape = (batch, width)
    elif net == "conv1d":
        c = channels or 16
        if width % c:
            raise ValueError(f"--width {width} must be a multiple of --channels {c} for conv1d")
        layers = [m for _ in range(depth) for m in (invlib.CircularConv1d(c, 3),
                                                    invlib.LeakyReLU(0.5))]
        shape = (batch, c, width // c)
    elif net == "conv2d":
        c = channels or 4
        side = math.isqrt(width // c)
        if c * side * side != width:
            raise ValueError(f"--width {width} must be channels * side**2 for conv2d, "
                             f"got channels={c}; try --width {c * side * side}")
        layers = [m for _ in range(depth) for m in (invlib.CircularConv2d(c, 3),
                                                    invlib.LeakyReLU(0.5))]
        shape = (batch, c, side, side)
    else:
        raise ValueError(f"net must be one of {NETS}, got {net!r}")
    if net != "coupling":  # coupling blocks are built on the device
        layers = [layer.to(device) for layer in layers]
    x = torch.randn(shape, device=device, requires_grad=True)
    return layers, x


def parse_args(description: str, default_net: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--net", choices=NETS, default=default_net)
    p.add_argument("--depths", type=int, nargs="+", default=None, help="default: 4 16 64")
    p.add_argument("--width", type=int, default=256, help="features per sample")
    p.add_argument("--batch", type=int, default=None, help="default: 4096")
    p.add_argument("--channels", type=int, default=None, help="conv nets only")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method (median); default 5")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    p.add_argument("--quick", action="store_true",
                   help="smoke run; defaults become depths 2 4, batch 256, 2 steps")
    p.add_argument("--out", default=None, help="also write the results as JSON to this path")
    args = p.parse_args()
    quick, full = dict(depths=[2, 4], batch=256, steps=2), dict(depths=[4, 16, 64], batch=4096, steps=5)
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def run(args: argparse.Namespace) -> list[dict]:
    """Measure every depth, print the table as rows come in, return the rows."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"net={args.net} width={args.width} batch={args.batch} device={device} "
          f"threads={torch.get_num_threads()} steps={args.steps} warmup={args.warmup} "
          f"torch={torch.__version__}")
    print("grads None before the step (fresh) / already allocated (accum); "
          "'acts' = peak above one copy of the parameter gradients, in activations of the batch")
    header = (f"{'depth':>5} {'method':<10} {'ms':>8} {'x plain':>7} {'loss':>10} "
              f"{'fresh MiB':>9} {'acts':>6} {'accum MiB':>9} {'acts':>6} {'after MiB':>9}")
    print(header)
    print("-" * len(header))
    rows = []
    for depth in args.depths:
        layers, x = build(args.net, depth, args.width, args.batch, args.channels, device)
        activation = x.numel() * x.element_size()
        params = sum(p.numel() * p.element_size() for layer in layers for p in layer.parameters())
        reports = compare_methods(layers, x, args.methods, args.steps, args.warmup)
        base = reports.get("plain", next(iter(reports.values()))).median_seconds
        for method, r in reports.items():
            row = dict(net=args.net, depth=depth, width=args.width, batch=args.batch,
                       device=str(device), method=method, activation_bytes=activation,
                       param_bytes=params, seconds=list(r.seconds),
                       median_seconds=r.median_seconds, ratio=r.median_seconds / base,
                       loss=r.loss)
            for regime, mem in (("fresh", r.fresh), ("accumulate", r.accumulate)):
                row[regime] = dict(peak_bytes=mem.peak_bytes, live_bytes=mem.live_bytes,
                                   grad_bytes=mem.grad_bytes,
                                   peak_above_grads=mem.peak_above_grads,
                                   activations=mem.peak_above_grads / activation)
            rows.append(row)
            print(f"{depth:>5} {method:<10} {1e3 * r.median_seconds:>8.1f} {row['ratio']:>7.2f} "
                  f"{r.loss:>10.4g} {r.fresh.peak_bytes / MIB:>9.1f} "
                  f"{row['fresh']['activations']:>6.1f} {r.accumulate.peak_bytes / MIB:>9.1f} "
                  f"{row['accumulate']['activations']:>6.1f} {r.fresh.live_bytes / MIB:>9.1f}",
                  flush=True)
        losses = [r.loss for r in reports.values()]
        if not all(math.isfinite(v) for v in losses):
            sys.exit(f"depth {depth}: non-finite loss {losses}")
        if max(losses) - min(losses) > 1e-3 * max(abs(v) for v in losses):
            sys.exit(f"depth {depth}: methods disagree on the loss {losses}")
    return rows


def main(description: str, default_net: str) -> None:
    args = parse_args(description, default_net)
    rows = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(args=vars(args), rows=rows), f, indent=1)
        print(f"wrote {args.out}")
