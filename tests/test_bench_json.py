"""`nst-fast bench --json` as a file that compares across machines: its schema (a real run at tiny
sizes), `--compare`'s ratios, and benchmarks/report.py's table and plot of several files."""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import statistics
from pathlib import Path

import pytest
from PIL import Image

from nst_fast import Options, bench
from nst_fast.bench import compare
from nst_fast.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def quick_peaks(monkeypatch):
    """The peak and bandwidth probes at sizes that take milliseconds (the CLI calls them through bench)."""
    monkeypatch.setattr(
        bench, "measure_peaks", functools.partial(bench.measure_peaks, rounds=2, round_seconds=0.01, max_side=128)
    )
    monkeypatch.setattr(bench, "measure_bandwidth", functools.partial(bench.measure_bandwidth, mib=4, rounds=2))


def test_bench_json_schema_from_a_real_run(tmp_path, capsys, quick_peaks):
    targets, out = tmp_path / "targets.json", tmp_path / "run.json"
    argv = ["bench", "--device", "cpu", "--sizes", "32", "--backends", "reference", "--rounds", "2", "--warmup", "0"]
    argv += ["--quality", "32", "--quality-batch-sizes", "1,2", "--reference-steps", "2", "--targets", str(targets)]
    assert main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "GFLOP/s" in printed and "of peak" in printed and "images/s" in printed
    data = compare.load_record(out)
    assert data["schema"] == "nst-fast-bench" and data["schema_version"] == compare.SCHEMA_VERSION
    machine = data["machine"]
    assert machine["torch"] and machine["cores"] >= 1 and "commit" in machine and "cuda" in machine
    assert machine["device"]["type"] == "cpu" and machine["device"]["logical_cpus"] >= 1
    workload = data["workload"]
    assert workload["images"] in ("tubingen.jpg, starry_night.jpg", "built-in samples")
    assert len(workload["content"]) == 16 and workload["options"]["style_layers"]
    assert workload["quality"]["reference_steps"] == 2 and workload["quality"]["batch_sizes"] == [1, 2]
    assert workload["iteration"]["configurations"] == ["reference:fp32"]
    quality_precision = data["quality"][0]["precision"]
    assert set(data["peak"]) == {"fp32", quality_precision}
    assert data["bandwidth"]["bytes_per_s"] > 0
    (row,) = data["results"]
    assert row["flops_per_iteration"] == bench.options_flops(Options(), *row["image"][2:]).total
    assert row["achieved_flops_per_s"] == pytest.approx(row["flops_per_iteration"] * 1000 / row["ms_median"])
    # The fraction: each timed round against the peak probed just before it (the machine drifts), at the
    # side where the run's peak measurement found its best.
    assert row["peak_side"] == data["peak"]["fp32"]["side"] and len(row["peak_beside"]) == len(row["ms_all"])
    each = [row["flops_per_iteration"] * 1000 / ms / p for ms, p in zip(row["ms_all"], row["peak_beside"])]
    assert row["fraction_of_peak"] == pytest.approx(statistics.median(each))
    assert [(q["size"], q["batch"]) for q in data["quality"]] == [(32, 1), (32, 2)]
    for q in data["quality"]:
        assert q["reached"] and q["loss_reached"] <= q["target_loss"]
        assert q["images_per_second"] == pytest.approx(q["batch"] / q["seconds"])
        assert q["flops"] > 0 and q["achieved_flops_per_s"] == pytest.approx(q["flops"] / q["seconds"])
    assert [q["target_source"] for q in data["quality"]] == ["computed", "cache"]
    # The target is the workload's, cached by its definition: a second run finds it.
    cached = json.loads(targets.read_text())["targets"]
    assert list(cached) == [data["quality"][0]["target_key"]]
    argv = [*argv[:3], "--quality", "32", "--reference-steps", "2", "--targets", str(targets), "--no-iterations"]
    assert main([*argv, "--no-peak", "--json", str(out), "-q"]) == 0
    again = compare.load_record(out)
    assert again["results"] == [] and again["peak"] == {}
    assert again["quality"][0]["target_source"] == "cache"
    assert again["quality"][0]["target_loss"] == data["quality"][0]["target_loss"]


def _record(cpu: str, scale: float) -> dict:
    """A synthetic bench file whose every speed is ``scale`` times the first machine's."""
    return {
        "schema": "nst-fast-bench",
        "schema_version": 2,
        "machine": {"host_cpu": cpu, "cores": 2, "gpu": None, "torch": "2.13.0"},
        "peak": {"bf16": {"flops_per_s": 500e9 * scale, "side": 4096}},
        "bandwidth": {"bytes_per_s": 20e9 * scale},
        "results": [
            {
                "backend": "torch",
                "precision": "bf16",
                "size": 512,
                "device": "cpu",
                "image": [1, 3, 384, 512],
                "ms_median": 400 / scale,
                "iterations_per_second": 2.5 * scale,
                "peak_memory_mb": 500,
                "flops_per_iteration": 298e9,
                "achieved_flops_per_s": 298e9 * 2.5 * scale,
                "peak_precision": "bf16",
                "fraction_of_peak": 298e9 * 2.5 / 500e9,
            }
        ],
        "quality": [
            {
                "size": 512,
                "image": [384, 512],
                "batch": 1,
                "backend": "torch",
                "precision": "bf16",
                "reached": True,
                "steps_factor": 1,
                "iterations": 100,
                "seconds": 50 / scale,
                "images_per_second": 0.02 * scale,
                "loss_reached": 0.99,
                "target_loss": 1.0,
                "target_key": "k512",
                "achieved_flops_per_s": 6e11,
            }
        ],
    }


def test_comparison_ratios(tmp_path, capsys):
    a, b = _record("CPU A", 1.0), _record("CPU B", 3.0)
    rows = {r.label: r for r in compare.comparison([a, b])}
    assert rows["peak bf16 matrix product"].values == pytest.approx([500, 1500])
    assert rows["peak bf16 matrix product"].ratios() == pytest.approx([1.0, 3.0])
    assert rows["512 px batch 1: images/s to loss 1"].ratios()[1] == pytest.approx(3.0)
    assert rows["torch bf16 512 px: of bf16 peak"].ratios()[1] == pytest.approx(1.0)
    # A figure only one machine has is shown, without a ratio; so is one of another workload's target.
    b["quality"][0]["target_key"] = "other"
    rows = compare.comparison([a, b])
    assert [r.ratios() for r in rows if "images/s" in r.label] == [[1.0, None], [None, None]]
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, record in zip(paths, (a, _record("CPU B", 3.0))):
        path.write_text(json.dumps(record))
    assert main(["bench", "--compare", *map(str, paths), "--plot", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    assert "CPU A (2 cores) / CPU A" not in out and "CPU B (2 cores) / CPU A (2 cores)" in out
    assert out.count("3.00×") >= 5  # peak, bandwidth, it/s, GFLOP/s, images/s
    with Image.open(tmp_path / "cmp.png") as png:
        assert png.size[0] > 800


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("not json", "not a JSON file"),
        ('{"schema": "other", "machine": {}}', "not an nst-fast bench file"),
        ('{"schema": "nst-fast-bench", "schema_version": 99, "machine": {}}', "schema version 99"),
    ],
)
def test_compare_refuses_what_is_no_bench_file(tmp_path, capsys, content, message):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_record("CPU A", 1.0)))
    if content is not None:
        bad.write_text(content)
    assert main(["bench", "--compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert main(["bench", "--compare", str(good)]) == 2 and "two or more" in capsys.readouterr().err


def test_an_old_file_still_compares():
    old = _record("CPU A", 1.0)
    for key in ("schema", "schema_version", "peak", "bandwidth", "quality"):
        del old[key]
    for row in old["results"]:
        for key in ("flops_per_iteration", "achieved_flops_per_s", "peak_precision", "fraction_of_peak"):
            del row[key]
    labels = [r.label for r in compare.comparison([old, _record("CPU B", 2.0)])]
    assert "torch bf16 512 px: iterations" in labels and "peak bf16 matrix product" in labels


def test_report_renders_several_machines(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    records = [_record("CPU A", 1.0), _record("CPU B", 2.0)]
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, record in zip(paths, records):
        path.write_text(json.dumps(record))
    tables = "\n".join(report.bench_tables(paths[1], copy.deepcopy(records[1])))
    assert "of peak" in tables and "| 0.040 |" in tables and "Reachable peak" in tables
    assert report.main([*map(str, paths), "--plot", str(tmp_path / "machines.png")]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "CPU A (2 cores)" in header and "CPU B (2 cores)" in header
    assert "| images/s | 0.02 | 0.04 | 2.00× |" in out
    with Image.open(tmp_path / "machines.png") as png:
        assert png.size[0] > 800 and png.size[1] > 300


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--no-iterations"], "nothing to measure"),
        (["--quality", "8"], "--quality must name sizes of at least 16 px"),
        (["--quality", "32", "--quality-batch-sizes", "0"], "--quality-batch-sizes must be"),
        (["--quality", "32", "--reference-steps", "0"], "--reference-steps must be at least 1"),
        (["--quality", "32", "--targets", "targets.txt"], "must end in .json"),
    ],
)
def test_bench_refuses_bad_quality_arguments(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
