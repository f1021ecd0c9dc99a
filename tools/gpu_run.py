"""The book's measurements that need a GPU, in one run; writes one JSON file.

Usage: ``python tools/gpu_run.py OUT.json`` on a machine with CUDA. Sections (each timed and
guarded, so one failure is recorded and the rest still runs):

* ``post_networks``: the seed post's three networks at the post's sizes
  (:data:`invlib.networks.POST_NETWORKS`), allocator-level peak of one float32 training step per
  method at batch 1 and a larger batch, next to the cost model's bytes;
* ``budget``: the largest batch and depth within 512 MiB and 2 GiB per network and method,
  predicted by :mod:`invlib.budget` (calibrated on the GPU) and measured at that size;
* ``autocast``: gradient error under CUDA float16/bfloat16 autocast per layer type, plain loop
  against ``InvertibleSequential`` (:func:`invlib.compare.autocast_errors`);
* ``bench``: ``python -m invlib.bench`` step-time ratios (its own JSON, embedded);
* ``profile``: ``torch.profiler``'s table for one ``invlib`` step of a dense and a coupling net.

The chapter "The post's networks, at the post's sizes" reads the file committed as
``book/data/gpu_h100.json``; this script is how it was made.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch import nn

import invlib
from invlib.budget import largest_batch, largest_depth, measured_bytes
from invlib.compare import autocast_errors
from invlib.networks import POST_NETWORKS, build

MiB = 2**20
DEVICE = "cuda"


def section(name, fn, results, seconds):
    start = time.perf_counter()
    try:
        results[name] = fn(deadline=start + seconds)
    except Exception:  # record and go on: one failure must not lose the other sections
        results[name] = {"error": traceback.format_exc(limit=3)}
    results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)
    print(name, "done in", results["seconds"][name], "s", flush=True)


def post_networks(deadline):
    rows = []
    plan = [("dense, width 64", [1, 1024], [8, 32]), ("dense, width 256", [1, 1024], [8, 32]),
            ("conv1d, 64 channels, length 256, 8 taps", [1, 16], [8, 32]),
            ("conv2d, 64 channels, 256x256, 8x8 taps", [1, 4], [8, 16])]
    for name, batches, depths in plan:
        for depth in depths:
            for batch in batches:
                if time.perf_counter() > deadline:
                    rows.append({"network": name, "skipped": "time"})
                    continue
                net = build(depth=depth, batch=batch, device=DEVICE, **POST_NETWORKS[name])
                t = time.perf_counter()
                measured = net.measure()
                rows.append({"network": name, "depth": depth, "batch": batch, "measured": measured,
                             "model": net.model_bytes(), "param_bytes": net.param_bytes(),
                             "layer_output_bytes": net.layer_output_bytes,
                             "seconds": round(time.perf_counter() - t, 2)})
                del net
                torch.cuda.empty_cache()
    return rows


BUDGET_SPECS = {"dense, width 256": dict(kind="dense", width=256),
                "coupling, width 256": dict(kind="coupling", width=256),
                "conv1d, 8 channels, length 32": dict(kind="conv1d", channels=8, size=(32,))}


def budget(deadline):
    rows = []
    for budget_mib in (512, 2048):
        for name, spec in BUDGET_SPECS.items():
            for method in ("plain", "checkpoint", "invertible"):
                if time.perf_counter() > deadline:
                    rows.append({"network": name, "method": method, "budget_mib": budget_mib, "skipped": "time"})
                    continue
                spec_d = dict(spec, device=DEVICE)
                row = {"network": name, "method": method, "budget_mib": budget_mib, "depth": 16, "batch": 256}
                b = largest_batch(spec_d, method, budget_mib * MiB, 16)
                row["largest_batch"] = b
                row["batch_measured_bytes"] = measured_bytes(build(depth=16, batch=b, **spec_d), method)
                d = largest_depth(spec_d, method, budget_mib * MiB, 256, limit=4096)
                row["largest_depth"] = d
                if d <= 2048:
                    row["depth_measured_bytes"] = measured_bytes(build(depth=d, batch=256, **spec_d), method)
                rows.append(row)
                torch.cuda.empty_cache()
    return rows


def autocast(deadline):
    kinds = {
        "InvertibleLinear + LeakyReLU": (lambda: invlib.InvertibleLinear(16), lambda: invlib.LeakyReLU(0.5), (64, 16)),
        "LULinear + LeakyReLU": (lambda: invlib.LULinear(16), lambda: invlib.LeakyReLU(0.5), (64, 16)),
        "AdditiveCoupling + LeakyReLU": (lambda: invlib.AdditiveCoupling(
            nn.Sequential(nn.Linear(8, 8), nn.Tanh()), nn.Sequential(nn.Linear(8, 8), nn.Tanh())),
            lambda: invlib.LeakyReLU(0.5), (64, 16)),
        "CircularConv1d + Asinh": (lambda: invlib.CircularConv1d(4, 3), invlib.Asinh, (32, 4, 16)),
        "CircularConv2d + Asinh": (lambda: invlib.CircularConv2d(4, 3), invlib.Asinh, (8, 4, 8, 8)),
        "InvertibleLinear + Asinh": (lambda: invlib.InvertibleLinear(16), invlib.Asinh, (64, 16)),
        "InvertibleLinear + ELU": (lambda: invlib.InvertibleLinear(16), invlib.ELU, (64, 16)),
    }
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        for name, (block, activation, shape) in kinds.items():
            torch.manual_seed(1)
            stack = invlib.InvertibleSequential(*[m for _ in range(4) for m in (block(), activation())]).to(DEVICE)
            with torch.no_grad():
                for p in stack.parameters():
                    p.add_(0.05 * torch.randn_like(p))
            g = torch.Generator(device=DEVICE).manual_seed(0)
            x = torch.randn(shape, generator=g, device=DEVICE)
            target = torch.randn(shape, generator=g, device=DEVICE)
            row = {"layer": name, "dtype": str(dtype).removeprefix("torch.")}
            try:
                row.update(autocast_errors(stack, x, target, dtype=dtype))
            except Exception as e:  # noqa: BLE001 - recorded, not hidden
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
    return rows


def bench(deadline):
    out = {}
    commands = {
        "coupling": ["--nets", "coupling", "--widths", "1024", "--batches", "4096", "--depths", "4", "64",
                     "--methods", "plain", "checkpoint", "invlib", "--repeats", "5"],
        "dense_conv": ["--nets", "dense", "lu", "conv1d", "conv2d", "--widths", "1024", "--batches", "256", "4096",
                       "--depths", "4", "16", "--methods", "plain", "checkpoint", "invlib", "--repeats", "3"],
    }
    for name, args in commands.items():
        left = deadline - time.perf_counter()
        if left < 20:
            out[name] = {"skipped": "time"}
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.json"
            proc = subprocess.run([sys.executable, "-m", "invlib.bench", "--device", "cuda", *args, "--json",
                                   str(path)], capture_output=True, text=True, timeout=left)
            out[name] = {"returncode": proc.returncode, "stdout": proc.stdout[-6000:], "stderr": proc.stderr[-2000:],
                         "json": json.loads(path.read_text()) if path.exists() else None}
    return out


def profile(deadline):
    """Where an ``invlib`` step's time goes on the GPU: torch.profiler's table for one step."""
    from invlib.compare import chain, training_step
    out = {}
    for kind in ("dense", "coupling"):
        net = build(kind, depth=4, batch=4096, width=1024, device=DEVICE)
        step = chain(net.layers, "invertible")
        for _ in range(2):
            training_step(step, net.x)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            training_step(step, net.x)
            torch.cuda.synchronize()
        out[kind] = prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=50)
    return out


def main(path: str) -> None:
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "cuda": torch.version.cuda, "python": platform.python_version(),
               "date": time.strftime("%Y-%m-%d")}
    section("post_networks", post_networks, results, 150)
    section("budget", budget, results, 110)
    section("autocast", autocast, results, 40)
    section("bench", bench, results, 150)
    section("profile", profile, results, 40)
    Path(path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
