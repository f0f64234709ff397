"""The nst-fast command, through main(argv): runs, help, and one-line errors that touch nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from nst_fast.cli import main

TINY = ["--size", "40", "--steps", "2", "-q"]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_stylizes_to_the_output_path(images, tmp_path, capsys):
    content, style = images
    code, _, err = run([content, style, "-o", tmp_path / "out.jpg", *TINY], capsys)
    assert code == 0 and err == ""
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.format == "JPEG" and out.size == (40, 30)


def test_reports_progress_and_time(images, tmp_path, capsys):
    content, style = images
    code, _, err = run([content, style, "-o", tmp_path / "out.png", "--size", "40", "--steps", "2"], capsys)
    assert code == 0
    assert "step 2/2" in err and "wrote" in err and " s" in err


def test_built_in_samples_when_no_images_are_given(tmp_path, capsys):
    code, _, err = run(["-o", tmp_path / "demo.png", "--size", "32", "--steps", "1"], capsys)
    assert code == 0 and "built-in sample" in err
    assert Image.open(tmp_path / "demo.png").size[1] == 32  # the portrait is taller than wide


def test_help_shows_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for text in (
        "--style-weight X",
        "(default: 20.0)",
        "--content-layers",
        "(default: relu4_2)",
        "--pooling",
        "{max,avg}",
        "--no-normalize-losses",
        "examples:",
    ):
        assert text in out, text


def test_list_layers(capsys):
    code, out, _ = run(["--list-layers"], capsys)
    assert code == 0 and out.split()[0] == "conv1_1" and "relu4_2" in out.split() and len(out.split()) == 37


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c, s: [c.with_name("missing.jpg"), s], "image not found"),
        (lambda c, s: [c, s.with_name("missing.png")], "image not found"),
        (lambda c, s: [c], "a STYLE image is needed"),
        (lambda c, s: [c, s, "--style-layers", "relu1_1,relu7_1"], "unknown VGG-19 layer 'relu7_1'"),
        (lambda c, s: [c, s, "--style-weight", "nan"], "style_weight must be a finite number"),
        (lambda c, s: [c, s, "--content-weight", "-1"], "content_weight must not be negative"),
        (lambda c, s: [c, s, "--style-layer-weights", "1,2"], "2 style layer weights given for 5"),
        (lambda c, s: [c, s, "--style-blend", "1,2"], "2 style blend weights given for 1"),
        (lambda c, s: [c, s, "--device", "cuda"], "no usable CUDA GPU"),
        (lambda c, s: [c, s, "--weights", c.with_name("vgg.pth")], "weights file not found"),
        (lambda c, s: [c, s, "--style-blend", "inf"], "style blend weights must be finite"),
        (lambda c, s: [c, s, s, "--style-blend", "0,0"], "not all zero"),
        (lambda c, s: [c, s, "--seed", "99999999999999999999999"], "seed must be between"),
        (lambda c, s: [c, s, "--device", "mps"], "not available here"),
        (lambda c, s: [c, s, "--device", "tpu"], "unknown device"),
        (lambda c, s: [c, s, "--style-layers", "relu1_1,relu1_1"], "relu1_1 more than once"),
        (lambda c, s: [c, s, "--tv-weight", "1e300"], "the loss became inf"),
    ],
)
def test_bad_input_is_one_line_and_touches_nothing(images, tmp_path, capsys, change, message):
    if message == "no usable CUDA GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    content, style = images
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    code, stdout, err = run([*change(content, style), "-o", out, *TINY], capsys)
    assert code == 2
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["content.png", "out.png", "style.png"]


@pytest.mark.parametrize(
    "output, message",
    [
        ("missing/out.png", "output directory does not exist"),
        ("out.xyz", "unknown output image extension"),
        ("out.msp", "cannot write an RGB image as MSP"),
    ],
)
def test_bad_output_paths(images, tmp_path, capsys, output, message):
    content, style = images
    code, _, err = run([content, style, "-o", tmp_path / output, *TINY], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_non_numeric_values_are_usage_errors(images, capsys):
    content, style = images
    with pytest.raises(SystemExit) as e:
        main([str(content), str(style), "--style-weight", "lots"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "invalid float value: 'lots'" in err and err.count("\n") == 1


def test_read_only_output_directory(images, tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root can write into read-only directories")
    content, style = images
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    code, _, err = run([content, style, "-o", locked / "out.png", *TINY], capsys)
    assert code == 2 and "not writable" in err


def test_not_an_image(images, tmp_path, capsys):
    content, style = images
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    code, _, err = run([bad, style, "-o", tmp_path / "out.png", *TINY], capsys)
    assert code == 2 and "not an image" in err and not (tmp_path / "out.png").exists()


def _importing_torch(pid: int) -> bool:
    """Whether process ``pid`` has begun loading torch's libraries: in the middle of its imports."""
    try:
        return "/torch/" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("command", ["script", "module"])
def test_ctrl_c_while_starting_is_one_line_and_130(images, tmp_path, command):
    """Ctrl-C while nst_fast and torch are being imported (seconds), before the command's own handler
    exists, printed a traceback and died by the signal; it must be the same one line and 130 as later."""
    if command == "script":
        script = Path(sys.executable).with_name("nst-fast")
        if not script.is_file():
            pytest.skip(f"the nst-fast script is not installed beside {sys.executable} (pip install -e .)")
        argv = [str(script)]
    else:
        argv = [sys.executable, "-m", "nst_fast_entry"]
    content, style = images
    argv += [str(content), str(style), "-o", str(tmp_path / "out.png"), "--size", "64", "--steps", "1000"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The signal as soon as torch's libraries are being loaded: in the middle of the imports, at any
        # machine's speed. Without /proc, after 0.3 s (torch takes seconds to import).
        deadline = time.monotonic() + 30
        if Path(f"/proc/{proc.pid}/maps").exists():
            while not _importing_torch(proc.pid) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
        else:
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.splitlines() == ["nst-fast: interrupted"], err
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("flag", ["-o", "--log-json"])
def test_output_that_cannot_be_created_is_refused_before_any_work(images, tmp_path, capsys, flag):
    """Root passes os.access everywhere: an output in /proc was found out only when saving, after the whole
    run, in a message naming the temporary file. The check now creates (and removes) a file there."""
    if not Path("/proc").is_dir():
        pytest.skip("no /proc here to hold an output that cannot be created")
    content, style = images
    target = "/proc/nst-fast-test.png" if flag == "-o" else "/proc/nst-fast-test.json"
    argv = [content, style, *(["-o", target] if flag == "-o" else ["-o", tmp_path / "out.png", flag, target])]
    code, _, err = run([*argv, "--size", "64", "--steps", "3"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert target in err and ".tmp" not in err and "Traceback" not in err
    assert not (tmp_path / "out.png").exists()


def test_a_file_that_is_not_weights_says_so(images, tmp_path, capsys):
    content, style = images
    text = tmp_path / "text.jpg"
    text.write_text("some notes, not a network\n")
    code, _, err = run([content, style, "-o", tmp_path / "out.png", "--weights", text, *TINY], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert str(text) in err and "not a PyTorch (.pth) or safetensors weights file" in err
    assert not err.rstrip().endswith(": 101"), err
