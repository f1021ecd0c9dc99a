"""Step time and peak memory of plain autograd, checkpointing, invlib and the RevNet libraries.

Usage::

    python -m invlib.bench [--nets dense lu coupling conv1d conv2d] [--widths 256]
                           [--depths 4 16 64] [--batches 4096] [--methods plain checkpoint invlib]
                           [--dtype float32] [--device cpu|cuda] [--threads N]
                           [--repeats 5] [--warmup 1] [--quick] [--json PATH]
    python -m invlib.bench --overhead [--nets ...] [--repeats 60] [--json PATH]

Each step is ``loss = mean(net(x)**2); loss.backward()`` with ``x`` requiring grad. For every
net, width, batch and depth the methods run interleaved in one process (the time is the median
of ``--repeats`` steps after ``--warmup`` rounds) and the ratio to plain autograd is taken inside
that run. Peak memory is the step's working memory above the model and one copy of its gradients:
the dispatch-level tracker on CPU (:mod:`invlib.memory`), ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats`` on CUDA. Next to each invlib ratio stands the FLOP model's
(:mod:`invlib.costs`, e.g. ``4/3 + w / (9 B)`` for ``dense``). Methods: ``plain`` (a Python
loop), ``checkpoint`` (``checkpoint_sequential``, ``sqrt`` of the modules as segments), ``invlib``
(:class:`invlib.InvertibleSequential`), and for coupling nets ``memcnn`` and ``revlib`` when
installed. A progress bar goes to stderr, the table to stdout, the rows and the machine to
``--json``. ``--quick`` is a smoke run of every net at width 64 (under a minute on 2 CPU cores).
``--overhead`` measures instead what the reverse steps cost besides their arithmetic
(:mod:`invlib._bench.overhead`): host reads per backward at depths 4 and 16, and the fixed cost
per layer at width 16, batch 4, depth 16, one thread, against the plain loop, for the default
container and for one with ``scratch_bytes`` of 1 MiB.

From Python: :func:`build` (a net and its input), :func:`time_steps` and :func:`measure`
(interleaved timing; and peak memory), :func:`model_flops` (the FLOP model's ratio), :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from invlib._bench.machine import machine
from invlib._bench.measure import Measured, measure, time_steps
from invlib._bench.nets import NETS, build, model_flops
from invlib._bench.overhead import SCRATCH, HostReads, fixed_cost, host_reads, overhead_table
from invlib._bench.peers import PEERS, available, peer_forward
from invlib.compare import chain

__all__ = ["METHODS", "NETS", "build", "model_flops", "time_steps", "measure", "Measured", "machine", "main",
           "HostReads", "host_reads", "fixed_cost"]

METHODS = ("plain", "checkpoint", "invlib", *PEERS)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
QUICK = dict(nets=list(NETS), widths=[64], depths=[2, 4], batches=[64], repeats=2)
FULL = dict(nets=["dense", "coupling", "conv1d"], widths=[256], depths=[4, 16, 64], batches=[4096], repeats=5)
MIB = 2**20


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        self.exit(2, f"invlib.bench: error: {message} (see python -m invlib.bench --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="python -m invlib.bench", description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", choices=NETS, default=None, help=f"default {FULL['nets']}")
    p.add_argument("--widths", nargs="+", type=_positive, default=None, help="features per sample; default 256")
    p.add_argument("--depths", nargs="+", type=_positive, default=None, help="default 4 16 64")
    p.add_argument("--batches", nargs="+", type=_positive, default=None, help="default 4096")
    p.add_argument("--channels", type=_positive, default=None, help="conv nets: default 16 (1-d), 4 (2-d)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                   help="default: all; plain is always run (the ratios are to it)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--threads", type=_positive, default=None, help="torch.set_num_threads on CPU")
    p.add_argument("--repeats", type=_positive, default=None, help="timed steps per method; default 5")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first; default 1")
    p.add_argument("--quick", action="store_true", help=f"smoke run: defaults become {QUICK}")
    p.add_argument("--json", default=None, metavar="PATH", help="also write rows and machine as JSON")
    p.add_argument("--overhead", action="store_true",
                   help="host reads per backward and fixed cost per layer at tiny sizes, instead")
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    explicit = args.methods is not None
    methods = list(args.methods) if explicit else list(METHODS)
    missing = [m for m in methods if m in PEERS and not available(m)]
    if explicit and missing:
        p.error(f"--methods {' '.join(missing)}: not installed; pip install {' '.join(missing)} or drop it")
    args.methods = ["plain"] + [m for m in methods if m != "plain" and m not in missing]
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device.type not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda, got {args.device}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available to torch {torch.__version__}; "
                "run on a machine with a GPU and a CUDA build of torch, or use --device cpu")
    return args


class _Progress:
    """A one-line progress bar on stderr (a line per configuration when stderr is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.done, self.total, self.label = 0, total, ""
        self.tty = sys.stderr.isatty()

    def start(self, label: str) -> None:
        self.label = label
        if not self.tty:
            print(f"[{self.done}/{self.total}] {label}", file=sys.stderr, flush=True)

    def tick(self) -> None:
        self.done += 1
        if self.tty:
            filled = 30 * self.done // self.total
            print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {self.label:<40}",
                  end="" if self.done < self.total else "\n", file=sys.stderr, flush=True)


def _configs(args: argparse.Namespace) -> list[tuple[str, int, int, int, list[str]]]:
    out = []
    for net in args.nets:
        methods = [m for m in args.methods if m not in PEERS or net == "coupling"]
        out += [(net, w, b, d, methods) for w in args.widths for b in args.batches for d in args.depths]
    return out


def run(args: argparse.Namespace) -> list[dict]:
    """Measure every configuration; print the table as rows come in; return the rows."""
    device, dtype = args.device, DTYPES[args.dtype]
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    configs = _configs(args)
    progress = _Progress(sum((args.warmup + args.repeats + 1) * len(c[-1]) for c in configs))
    header = (f"{'net':<8} {'width':>5} {'batch':>5} {'depth':>5} {'method':<10} {'ms':>9} "
              f"{'x plain':>7} {'model x':>7} {'peak MiB':>9} {'acts':>6}")
    print(f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} repeats={args.repeats} "
          f"warmup={args.warmup} torch={torch.__version__}; peak = working memory above model and "
          "gradients; acts = peak in activations of the batch; model x = FLOP model's ratio")
    print(header)
    print("-" * len(header), flush=True)
    rows = []
    for net, width, batch, depth, methods in configs:
        progress.start(f"{net} w={width} B={batch} d={depth}")
        torch.manual_seed(0)
        layers, x = build(net, depth, width, batch, args.channels, device, dtype)
        params = list({id(p): p for layer in layers for p in layer.parameters()}.values())
        forwards = {m: (peer_forward(m, layers) if m in PEERS
                        else chain(layers, "invertible" if m == "invlib" else m)) for m in methods}
        results = measure(forwards, x, params, args.repeats, args.warmup, progress.tick)
        activation = x.numel() * x.element_size()
        flops = model_flops(net, depth, width, batch, args.channels)
        base = results["plain"].median_seconds
        for method, r in results.items():
            row = dict(net=net, width=width, batch=batch, depth=depth, method=method, dtype=args.dtype,
                       device=str(device), median_seconds=r.median_seconds, seconds=list(r.seconds),
                       ratio=r.median_seconds / base, peak_bytes=r.peak_bytes,
                       peak_activations=r.peak_bytes / activation, activation_bytes=activation,
                       param_bytes=sum(p.numel() * p.element_size() for p in params), loss=r.loss,
                       model_ratio=flops["ratio"] if method == "invlib" else None)
            rows.append(row)
            model = f"{flops['ratio']:7.2f}" if method == "invlib" else f"{'':7}"
            print(f"{net:<8} {width:>5} {batch:>5} {depth:>5} {method:<10} {1e3 * r.median_seconds:>9.2f} "
                  f"{row['ratio']:>7.2f} {model} {r.peak_bytes / MIB:>9.1f} {row['peak_activations']:>6.1f}",
                  flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from command-line arguments; returns the exit status."""
    args = parse_args(argv)
    if args.overhead:
        return _overhead(args)
    try:
        rows = run(args)
    except (ValueError, torch.OutOfMemoryError) as e:
        print(f"invlib.bench: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    if args.json:
        settings = {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(args).items()}
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine(args.device), args=settings, rows=rows), f, indent=1)
        print(f"wrote {args.json}")
    return 0


def _overhead(args: argparse.Namespace) -> int:
    nets = tuple(args.nets) if args.nets != FULL["nets"] else NETS
    rounds = args.repeats if args.repeats != FULL["repeats"] else 60
    print(f"host reads per backward (depth 4, 16) and fixed cost per layer at width 16, batch 4, depth 16, "
          f"one thread, {rounds} interleaved rounds; 'scratch': InvertibleSequential(scratch_bytes={SCRATCH}); "
          f"torch={torch.__version__}")
    header = (f"{'net':<8} {'reads d4':>8} {'reads d16':>9} {'plain us':>9} {'invlib us':>10} {'ratio':>6} "
              f"{'scratch us':>10} {'ratio':>6}")
    print(header)
    print("-" * len(header), flush=True)
    rows = []
    for net in nets:
        row = overhead_table((net,), rounds=rounds)[0]
        rows.append(row)
        print(f"{net:<8} {row['reads_d4']:>8} {row['reads_d16']:>9} {row['plain_us']:>9.1f} {row['invlib_us']:>10.1f} "
              f"{row['ratio']:>6.2f} {row['scratch_us']:>10.1f} {row['scratch_ratio']:>6.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine(torch.device("cpu")), rows=rows), f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
