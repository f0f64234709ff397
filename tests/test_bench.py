"""`nst-fast bench` and `nst-fast info`: real measurements at tiny sizes, JSON and plot written."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from nst_fast import bench
from nst_fast.cli import main


def test_bench_writes_table_json_and_plot(tmp_path, capsys):
    code = main(
        [
            "bench",
            "--sizes",
            "32,48",
            "--rounds",
            "3",
            "--warmup",
            "1",
            "--backends",
            "reference",
            "--no-peak",  # measured and checked in test_bench_json.py
            "--json",
            str(tmp_path / "b.json"),
            "--plot",
            str(tmp_path / "b.png"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "ms/iter" in out and "reference" in out
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["machine"]["torch"] and data["machine"]["cores"] >= 1
    results = data["results"]
    assert [(r["backend"], r["size"]) for r in results] == [("reference", 32), ("reference", 48)]
    for r in results:
        assert r["ms_median"] > 0 and len(r["ms_all"]) == 3 and r["ms_median"] in r["ms_all"]
        assert r["iterations_per_second"] == pytest.approx(1000 / r["ms_median"])
        assert r["loss"] > 0
    with Image.open(tmp_path / "b.png") as plot:
        assert plot.size[0] > 800 and plot.size[1] > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.png"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sizes", "12"], "at least 16 px"),
        (["--sizes", "a,b"], "comma-separated integers"),
        (["--backends", "tensorrt"], "unknown backend 'tensorrt'"),
        (["--json", "out.txt"], "must end in .json"),
        (["--plot", "missing/b.png"], "output directory does not exist"),
        (["--rounds", "0"], "--rounds"),
    ],
)
def test_bench_bad_arguments(argv, message, capsys):
    code = main(["bench", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_measure_step_isolated_reports_memory():
    m = bench.measure_step_isolated("reference", "fp32", 32, "cpu", rounds=1, warmup=0)
    assert m.image == [1, 3, 24, 32] and m.ms_median > 0
    # The network's weights alone (20M float32 parameters, truncated at relu5_1) take over 40 MiB.
    assert m.memory_kind == "cpu_peak_rss" and m.peak_memory_mb is not None and m.peak_memory_mb > 40


def test_every_backend_and_precision_measures_a_finite_loss():
    images = bench.default_images()
    configurations = bench.configurations("cpu")
    assert {b for b, _ in configurations} == {"reference", "torch", "onnxruntime"}
    for backend, precision in configurations:
        m = bench.measure_step(backend, precision, 32, "cpu", rounds=1, warmup=0, images=images)
        assert m.ms_median > 0 and m.loss == m.loss and m.loss > 0, (backend, precision)


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("torch:", "device:", "extension:", "self-check:", "backends:", "weights:"):
        assert key in out


def test_bench_batch_sizes(tmp_path, capsys):
    code = main(
        [
            "bench",
            "--sizes",
            "32",
            "--batch-sizes",
            "1,2",
            "--rounds",
            "1",
            "--device",
            "cpu",
            "--json",
            str(tmp_path / "batch.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "images/s" in out
    rows = json.loads((tmp_path / "batch.json").read_text())["batch"]
    assert [(r["size"], r["batch"]) for r in rows] == [(32, 1), (32, 2)]
    assert all(
        r["images_per_second"] > 0 and r["images_per_second"] == pytest.approx(r["batch"] / r["seconds"]) for r in rows
    )
    assert main(["bench", "--batch-sizes", "0"]) == 2 and "positive integers" in capsys.readouterr().err
