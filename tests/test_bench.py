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
