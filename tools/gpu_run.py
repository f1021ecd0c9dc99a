"""The book's measurements that need a GPU, in one run; writes one JSON file.

Usage: ``python tools/gpu_run.py OUT.json [SECTION ...]`` on a machine with CUDA (all sections by
default). Sections (each timed and guarded, so one failure is recorded and the rest still runs):

* ``post_networks``: the seed post's three networks at the post's sizes
  (:data:`invlib.networks.POST_NETWORKS`), allocator-level peak of one float32 training step per
  method at batch 1 and a larger batch, next to the cost model's bytes;
* ``budget``: the largest batch and depth within 512 MiB and 2 GiB per network and method,
  predicted by :mod:`invlib.budget` (calibrated on the GPU) and measured at that size;
* ``autocast``: gradient error under CUDA float16/bfloat16 autocast per layer type, plain loop
  against ``InvertibleSequential``, at batch 1024 over five seeds, and ELU's against the batch
  (:func:`invlib.precision.autocast_survey`);
* ``bench``: ``python -m invlib.bench`` step-time ratios (its own JSON, embedded);
* ``profile``: ``torch.profiler``'s table for one ``invlib`` step of dense, LU, coupling and conv1d nets;
* ``parts``: the parts of a dense layer's reverse step, each timed alone;
* ``syncs``: every net's backward with ``torch.cuda.set_sync_debug_mode("error")`` around each
  layer's reverse step (the two reads per backward, the verdicts and the rebuilt input's
  comparison, stay outside), and ``python -m invlib.bench --overhead`` on the GPU's host.

The chapters "The post's networks, at the post's sizes" (post_networks, budget), "Compute" (bench,
parts) and "invlib in a training loop" (autocast) read the file committed as
``book/data/gpu_h100.json``; this script is how it was made (sections run on their own, e.g.
``python tools/gpu_run.py new.json autocast parts``, were merged into it by key).
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

import invlib
from invlib.budget import largest_batch, largest_depth, measured_bytes
from invlib.precision import autocast_survey
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
    """Gradient error under CUDA float16/bfloat16 autocast per layer type at a training batch,
    over five seeds, and ELU's ratio against the batch (:mod:`invlib.precision`)."""
    rows = autocast_survey(dtypes=(torch.float16, torch.bfloat16), batch=1024, seeds=range(5), device=DEVICE)
    for batch in (64, 256, 4096):
        if time.perf_counter() > deadline:
            break
        rows += autocast_survey(["InvertibleLinear + ELU"], (torch.float16, torch.bfloat16), batch=batch,
                                seeds=range(5), device=DEVICE)
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
    """Where an ``invlib`` step's time goes on the GPU: torch.profiler's table for one step, and how
    often the host waits for the device (``.item()``-like reads and stream synchronisations)."""
    from invlib.compare import chain, training_step
    out = {}
    for kind in ("dense", "lu", "coupling", "conv1d"):
        if time.perf_counter() > deadline:
            break
        if kind == "lu":
            layers = [m.to(DEVICE) for _ in range(4) for m in (invlib.LULinear(1024), invlib.LeakyReLU(0.5))]
            x = torch.randn(4096, 1024, device=DEVICE, requires_grad=True)
        else:
            spec = {"channels": 64, "size": (1024,)} if kind == "conv1d" else {"width": 1024}
            net = build(kind, depth=4, batch=64 if kind == "conv1d" else 4096, device=DEVICE, **spec)
            layers, x = net.layers, net.x
        step = chain(layers, "invertible")
        for _ in range(2):
            training_step(step, x)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            training_step(step, x)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        syncs = [e for e in prof.key_averages()
                 if e.key in ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize")]
        out[kind] = {"step_seconds_profiled": seconds,
                     "table": prof.key_averages().table(sort_by="cpu_time_total", row_limit=30,
                                                        max_name_column_width=50),
                     "syncs": [{"op": e.key, "count": e.count, "cpu_us": e.cpu_time_total}
                               for e in sorted(syncs, key=lambda e: -e.count)]}
    return out


def parts(deadline):
    """Milliseconds of each part of a dense layer's reverse step at width 1024, batch 4096, on the
    GPU, each timed alone (CUDA-synchronised, median of 20): what the fixed per-layer cost is."""
    from invlib._verdict import check_lu
    from invlib.linear import pivots_to_columns, solve_lu_right

    def ms(fn):
        for _ in range(3):
            fn()
        times = []
        for _ in range(20):
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(1e3 * (time.perf_counter() - start))
        return sorted(times)[10]

    torch.manual_seed(0)
    w = invlib.InvertibleLinear(1024).to(DEVICE).weight.detach()
    y = torch.randn(4096, 1024, device=DEVICE)
    lu, pivots, _ = torch.linalg.lu_factor_ex(w)
    columns = pivots_to_columns(lu, pivots)
    out = {"lu_factor_ex": ms(lambda: torch.linalg.lu_factor_ex(w)),
           "pivots_to_columns": ms(lambda: pivots_to_columns(lu, pivots)),
           "check_lu (condition estimate)": ms(lambda: check_lu(lu, pivots, w, owner="x")),
           "solve_lu_right": ms(lambda: solve_lu_right(y, None, columns, lu, lu)),
           "matmul y @ W": ms(lambda: y @ w),
           "weight_bar y^T x": ms(lambda: y.mT @ y)}
    layer = invlib.InvertibleLinear(1024).to(DEVICE)
    out["InvertibleLinear.reverse (whole)"] = ms(lambda: layer.reverse(y, y))
    return out


def syncs(deadline):
    """Does any layer's reverse step synchronise with the device? Each net's backward runs with
    ``torch.cuda.set_sync_debug_mode("error")`` switched on around every layer's reverse step
    (``invlib._reverse_step._reverse``), so a synchronising op there raises; the once-per-backward
    reads of the verdicts and of the rebuilt input's comparison are outside it."""
    import invlib._reverse_step as reverse_step

    inner = reverse_step._reverse

    def strict(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return inner(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    out = {}
    reverse_step._reverse = strict
    try:
        for kind in ("dense", "lu", "coupling", "conv1d", "conv2d"):
            spec = {"conv1d": {"channels": 16, "size": (64,)}, "conv2d": {"channels": 4, "size": (16, 16)}}.get(
                kind, {"width": 256})
            net = build(kind, depth=4, batch=256, device=DEVICE, **spec)
            try:
                invlib.InvertibleSequential(*net.layers)(net.x).square().sum().backward()
                torch.cuda.synchronize()
                out[kind] = "no synchronisation inside the reverse steps"
            except RuntimeError as error:
                out[kind] = f"raised: {str(error).splitlines()[0]}"
    finally:
        reverse_step._reverse = inner
    proc = subprocess.run([sys.executable, "-m", "invlib.bench", "--overhead"], capture_output=True, text=True,
                          timeout=max(30, deadline - time.perf_counter()))
    out["overhead (host CPU)"] = proc.stdout[-4000:]
    return out


SECTIONS = {"post_networks": (post_networks, 150), "budget": (budget, 110), "autocast": (autocast, 60),
            "bench": (bench, 150), "profile": (profile, 60),
            "parts": (parts, 30), "syncs": (syncs, 90)}


def main(path: str, names: list[str]) -> None:
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "cuda": torch.version.cuda, "python": platform.python_version(),
               "date": time.strftime("%Y-%m-%d")}
    for name in names or SECTIONS:
        fn, seconds = SECTIONS[name]
        section(name, fn, results, seconds)
        Path(path).write_text(json.dumps(results, indent=1))  # what is done survives a timeout


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
