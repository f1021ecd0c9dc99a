"""python -m invlib.bench: the quick run, its JSON, invlib's flat peak, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from invlib.bench import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "quick.json"
    threads = torch.get_num_threads()
    try:
        assert main(["--quick", "--repeats", "1", "--warmup", "0", "--json", str(path)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(path.read_text())


def test_quick_json_has_machine_and_rows(quick):
    assert {"cpu", "threads", "torch", "gpu", "device"} <= set(quick["machine"])
    assert quick["machine"]["torch"] == torch.__version__
    assert {r["net"] for r in quick["rows"]} == {"dense", "lu", "coupling", "conv1d", "conv2d"}
    for row in quick["rows"]:
        assert {"method", "median_seconds", "ratio", "peak_bytes", "model_ratio", "depth", "batch"} <= set(row)
        assert row["median_seconds"] > 0 and row["peak_bytes"] > 0
        if row["method"] == "plain":
            assert row["ratio"] == 1.0
        if row["method"] == "invlib":
            assert row["model_ratio"] > 1


def test_invlib_peak_is_flat_in_depth_and_plain_grows(quick):
    peak = {(r["net"], r["method"], r["depth"]): r["peak_bytes"] for r in quick["rows"]}
    for net in ("dense", "lu", "coupling", "conv1d", "conv2d"):
        assert peak[net, "invlib", 4] <= 1.05 * peak[net, "invlib", 2], net
        assert peak[net, "plain", 4] >= 1.3 * peak[net, "plain", 2], net


@pytest.mark.parametrize("args,message", [
    (["--nets", "resnet"], "invalid choice"),
    (["--depths", "0"], "positive integer"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--nets", "conv2d", "--widths", "10", "--depths", "1"], "must be channels * side**2"),
])
def test_bad_options_give_one_line_and_nonzero_exit(args, message, capsys):
    try:
        status = main(args)
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err
    assert status != 0
    assert message in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_module_entry_point_reports_without_traceback():
    done = subprocess.run([sys.executable, "-m", "invlib.bench", "--warmup", "-1"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "invlib.bench: error: --warmup must be >= 0, got -1 (see python -m invlib.bench --help)"]


# ---- the engine's overhead: host reads per backward, fixed cost per layer --------------------

def test_host_read_counter_counts_item_tolist_and_numpy():
    from invlib._bench.overhead import HostReads

    t = torch.arange(3.0)
    with HostReads() as reads:
        float(t.sum()), t.tolist(), t.numpy(), bool(t[0] > 0)
    assert reads.by == {"_local_scalar_dense": 2, "tolist": 1, "numpy": 1} and reads.count == 4
    assert torch.Tensor.tolist is not None and t.tolist() == [0.0, 1.0, 2.0]  # unwrapped again


@pytest.mark.parametrize("net", ["dense", "lu", "coupling", "conv1d", "conv2d"])
def test_at_most_two_host_reads_per_backward_whatever_the_depth(net):
    """The check before the sweep reads every layer's verdict at once, the last step compares
    the rebuilt input with the forward's once; nothing is read per layer."""
    from invlib._bench.overhead import host_reads

    counts = [host_reads(net, depth)["total"] for depth in (4, 16)]
    assert counts[0] == counts[1] <= 2, counts


def test_host_reads_of_mixed_nested_hooked_and_random_stacks():
    from invlib._bench.overhead import HostReads
    from invlib.compare import mixed_net

    import invlib

    for depth in (1, 4):
        torch.manual_seed(0)
        sub = lambda: torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.2))  # noqa: E731
        inner = invlib.InvertibleSequential(*[invlib.AdditiveCoupling(sub(), sub()) for _ in range(depth)])
        net = invlib.InvertibleSequential(*mixed_net(8, invertible=False, dtype=torch.float32), inner,
                                          invlib.CircularConv1d(8, 3) if False else invlib.Asinh())
        net[0].register_full_backward_hook(lambda m, gi, go: None)
        loss = net(torch.randn(5, 8)).square().sum()
        with HostReads() as reads:
            loss.backward()
        assert reads.count <= 2, reads.by


def test_overhead_cli_prints_reads_and_ratios(tmp_path):
    path = tmp_path / "overhead.json"
    done = subprocess.run([sys.executable, "-m", "invlib.bench", "--overhead", "--nets", "dense", "coupling",
                           "--repeats", "3", "--json", str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    rows = json.loads(path.read_text())["rows"]
    assert [r["net"] for r in rows] == ["dense", "coupling"]
    for row in rows:
        assert row["reads_d4"] == row["reads_d16"] <= 2
        assert row["plain_us"] > 0 and row["invlib_us"] > 0 and row["ratio"] > 0
        assert row["scratch_bytes"] == 1 << 20 and row["scratch_us"] > 0 and row["scratch_ratio"] > 0
