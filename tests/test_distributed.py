"""A collection on Ray (nst_fast.distributed, `nst-fast ... --ray`): results equal to one process's, a killed
actor's images redone elsewhere and written once, resuming, refusing changed settings, bad files reported.

Local Ray only: one `ray.init(num_cpus=2, include_dashboard=False)` for the module, shut down at its end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_fast import Options, Stylizer
from nst_fast.cli import main
from nst_fast.distributed import SettingsChanged, stylize_dataset
from nst_fast.distributed.attempts import read_run
from nst_fast.distributed.manifest import MANIFEST_NAME, Manifest, settings_of
from nst_fast.image import load_image, tensor_to_pil

# fp32 and one torch thread, as each actor has here (1 CPU each): a run's result depends on the thread
# count (oneDNN splits its sums by thread: 4e-6 apart in fp32) and on whether an image ran alone or in
# a batch (4e-6), but not on its batch-mates; so, with both alike, the outputs are the same bytes.
OPTIONS = Options(size=64, steps=3, precision="fp32", batch_size=2, device="cpu")
SHAPES = [(48, 64)] * 4 + [(64, 48)] * 2  # two planned shapes: batches never mix them
POOL = {"actors": 2, "actor_cpus": 1, "progress": False}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def style(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("style") / "style.png"
    _random_png(path, 64, 64, seed=1)
    return path


def _random_png(path: Path, height: int, width: int, seed: int) -> Path:
    gen = torch.Generator().manual_seed(seed)
    Image.fromarray((torch.rand(height, width, 3, generator=gen) * 255).to(torch.uint8).numpy()).save(path)
    return path


def _contents(folder: Path, shapes=SHAPES) -> list[Path]:
    folder.mkdir(exist_ok=True)
    return [_random_png(folder / f"c{i}.png", h, w, seed=10 + i) for i, (h, w) in enumerate(shapes)]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST_NAME).read_text())


def _writes(out: Path, *runs: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in runs:
        for name, events in read_run(out, run).items():
            counts[name] = counts.get(name, 0) + sum(e["event"] == "wrote" for e in events)
    return counts


def _leftovers(out: Path) -> list[str]:
    """Files in ``out`` other than outputs, the manifest and the attempt records: none may be left."""
    return [p.name for p in out.iterdir() if p.suffix != ".png" and p.name not in (MANIFEST_NAME, ".nst-fast")]


def test_importing_nst_fast_does_not_import_ray():
    code = (
        "import sys, nst_fast, nst_fast.distributed, nst_fast.cli.stylize\n"
        "from nst_fast.cli import main\n"
        "assert main(['--list-layers']) == 0\n"
        "sys.exit(1 if 'ray' in sys.modules else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, "importing nst_fast (or the CLI, or nst_fast.distributed) imported ray"


def test_manifest_resumes_and_refuses_other_settings(tmp_path, style):
    """Without Ray: what a rerun skips, redoes and refuses, from the manifest alone."""
    out = tmp_path / "out"
    out.mkdir()
    settings = settings_of(OPTIONS, [style.read_bytes()], [1.0], {"format": "png", "bit_depth": 8, "quality": None})
    jobs = [(f"c{i}.png", f"/in/c{i}.png") for i in range(4)]
    first = Manifest.open(out, settings, "run1")
    todo, skipped = first.resume(jobs)
    assert [name for name, _, _ in todo] == [name for name, _ in jobs] and skipped == []
    for name in ("c0.png", "c1.png", "c2.png"):
        (out / name).write_bytes(b"written")  # c2: written by a worker, its result never reached the driver
    first.record("c0.png", "done", None, 1.0, "w:1")
    first.record("c1.png", "failed", "not an image", None, "w:1")
    first.save()
    second = Manifest.open(out, settings, "run2")
    todo, skipped = second.resume(jobs)
    assert skipped == ["c0.png", "c2.png"], "done, and written by the stopped run: not redone"
    assert [name for name, _, _ in todo] == ["c1.png", "c3.png"], "failed and unfinished: redone"
    assert second.previous_run == "run1"

    other = settings_of(OPTIONS.replace(steps=4), [style.read_bytes()], [1.0], settings["output"])
    with pytest.raises(SettingsChanged, match="steps 3 → 4.*--overwrite"):
        Manifest.open(out, other, "run3")
    restyled = settings_of(OPTIONS, [b"another style"], [1.0], settings["output"])
    with pytest.raises(SettingsChanged, match="the style images"):
        Manifest.open(out, restyled, "run3")
    assert Manifest.open(out, other, "run3", overwrite=True).resume(jobs)[1] == [], "overwrite: all redone"

    (out / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(SettingsChanged, match="cannot read the manifest"):
        Manifest.open(out, settings, "run4")
    (out / MANIFEST_NAME).unlink()
    with pytest.raises(SettingsChanged, match="already holds 3 of the outputs"):
        Manifest.open(out, settings, "run5").resume(jobs)


def test_outputs_that_would_replace_inputs_are_refused_before_ray_starts(tmp_path, style):
    """stylize_dataset into the content images' own directory (png outputs of png inputs), or over the
    style image: refused at once, every input untouched; a quoted ~ is the home directory."""
    pytest.importorskip("ray")
    from nst_fast.errors import OptionsError

    photos = tmp_path / "photos"
    photos.mkdir()
    _random_png(photos / "a.png", 48, 64, seed=2)
    before = (photos / "a.png").read_bytes()
    with pytest.raises(OptionsError, match="a.png would overwrite an input"):
        stylize_dataset([photos / "a.png"], style, photos, OPTIONS, format="png")
    with pytest.raises(OptionsError, match="style.png would overwrite an input"):
        stylize_dataset([style], [style], style.parent, OPTIONS, format="png")
    assert (photos / "a.png").read_bytes() == before and not (photos / MANIFEST_NAME).exists()


def test_six_images_over_two_actors_equal_one_process(tmp_path, ray_local, style):
    paths = _contents(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    rows = []
    summary = stylize_dataset(paths, style, out, OPTIONS, on_result=rows.append, **POOL)
    names = [f"c{i}.png" for i in range(6)]
    assert summary.ok and sorted(summary.done) == names and summary.skipped == []
    assert summary.resources == "2 actors × 1 CPU"
    assert sorted(r["output"] for r in rows) == names and all(r["wrote"] for r in rows)
    manifest = _manifest(out)
    assert {name: e["status"] for name, e in manifest["images"].items()} == dict.fromkeys(names, "done")
    assert _writes(out, manifest["run"]) == dict.fromkeys(names, 1)
    assert _leftovers(out) == []

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = Stylizer(style, OPTIONS).stylize_many([load_image(p) for p in paths])
    finally:
        torch.set_num_threads(threads)
    for name, image in zip(names, expected):
        assert np.array_equal(_pixels(out / name), np.asarray(tensor_to_pil(image))), name


def test_a_killed_actors_images_are_redone_elsewhere_and_written_once(tmp_path, ray_local, style):
    paths = _contents(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    killed = []

    def kill_a_busy_actor(row) -> None:
        """At the first result: SIGKILL the worker of an image that is being stylized now."""
        if killed:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for events in read_run(out, next((out / ".nst-fast" / "attempts").iterdir()).name).values():
                if events and events[-1]["event"] == "start":
                    pid = int(events[-1]["worker"].rsplit(":", 1)[1])
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)
        pytest.fail("no image was being stylized after the first result")

    # More steps, one image per batch: each actor is busy for a while with an image of its own.
    options = OPTIONS.replace(steps=12, batch_size=1)
    summary = stylize_dataset(paths, style, out, options, on_result=kill_a_busy_actor, **POOL)
    names = [f"c{i}.png" for i in range(6)]
    assert killed and summary.ok and sorted(summary.done) == names
    events = read_run(out, _manifest(out)["run"])
    assert _writes(out, _manifest(out)["run"]) == dict.fromkeys(names, 1), "every output written exactly once"
    victims = [
        n
        for n, ev in events.items()
        if any(e["event"] == "start" and e["worker"].endswith(f":{killed[0]}") for e in ev)
    ]
    assert victims, "the killed worker had started an image"
    for name in victims:
        if not any(e["event"] == "wrote" and e["worker"].endswith(f":{killed[0]}") for e in events[name]):
            assert sum(e["event"] == "start" for e in events[name]) == 2, "retried once, elsewhere"
    for path in (out / n for n in names):
        assert _pixels(path).shape in {(48, 64, 3), (64, 48, 3)}  # whole files, decoded to the end
    assert _leftovers(out) == []


def test_an_interrupted_run_resumes_with_the_unfinished_images_only(tmp_path, ray_local, style):
    paths = _contents(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    seen = []

    def interrupt(row) -> None:  # as Ctrl-C would, at the first result: most images are not done yet
        seen.append(row["output"])
        raise KeyboardInterrupt

    options = OPTIONS.replace(steps=12, batch_size=1)
    with pytest.raises(KeyboardInterrupt):
        stylize_dataset(paths, style, out, options, on_result=interrupt, **POOL)
    first = _manifest(out)
    recorded = {name for name, e in first["images"].items() if e["status"] == "done"}
    assert recorded == set(seen)
    assert {e["status"] for name, e in first["images"].items() if name not in recorded} == {"pending"}

    summary = stylize_dataset(paths, style, out, options, **POOL)
    names = {f"c{i}.png" for i in range(6)}
    assert summary.ok and set(summary.done) | set(summary.skipped) == names
    assert recorded <= set(summary.skipped) and set(summary.done), "the finished skipped, the rest done"
    second = _manifest(out)
    writes_first, writes_second = _writes(out, first["run"]), _writes(out, second["run"])
    assert {n: writes_first.get(n, 0) + writes_second.get(n, 0) for n in names} == dict.fromkeys(names, 1)
    assert set(summary.done) == {n for n, count in writes_second.items() if count}, "only the unfinished redone"
    assert _leftovers(out) == []

    # The same collection with other options: refused, and nothing touched.
    before = (out / MANIFEST_NAME).read_bytes()
    with pytest.raises(SettingsChanged, match="steps 12 → 4"):
        stylize_dataset(paths, style, out, options.replace(steps=4), **POOL)
    assert (out / MANIFEST_NAME).read_bytes() == before


def test_cli_refuses_changed_settings_and_overwrites_when_told(tmp_path, ray_local, style, capsys):
    paths = _contents(tmp_path / "in", SHAPES[:2])
    out = tmp_path / "out"
    out.mkdir()
    flags = ["--ray", "--size", "64", "--precision", "fp32", "--device", "cpu", "--actors", "2", "--actor-cpus", "1"]
    assert main([str(tmp_path / "in"), str(style), "-o", str(out), "--steps", "1", "-q", *flags]) == 0
    identities = {p.name: os.stat(out / p.name).st_ino for p in paths}
    capsys.readouterr()
    code = main([str(tmp_path / "in"), str(style), "-o", str(out), "--steps", "2", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "steps 1 → 2" in err and "--overwrite" in err
    assert main([str(tmp_path / "in"), str(style), "-o", str(out), "--steps", "2", "--overwrite", "-q", *flags]) == 0
    assert all(os.stat(out / name).st_ino != ino for name, ino in identities.items()), "every image redone"
    assert _manifest(out)["settings"]["options"]["steps"] == 2


def test_cli_reports_bad_files_and_does_the_rest(tmp_path, ray_local, style, capsys):
    folder = tmp_path / "in"
    _contents(folder, SHAPES[:3])
    (folder / "bad.png").write_text("not an image")
    Image.new("RGB", (1, 1)).save(folder / "tiny.png")
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(folder), str(style), "-o", str(out), "--ray", "--size", "64", "--steps", "2", "--device", "cpu"]
    argv += ["--actors", "2", "--actor-cpus", "1"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 3, err
    assert "5 images: 3 stylized, 0 skipped (done before), 2 failed" in err
    assert "error: bad.png: not an image" in err and "error: tiny.png: image is 1×1 px: too small" in err
    assert "Traceback" not in err
    images = _manifest(out)["images"]
    assert images["bad.png"]["status"] == "failed" and "not an image" in images["bad.png"]["error"]
    assert all(images[f"c{i}.png"]["status"] == "done" and (out / f"c{i}.png").is_file() for i in range(3))

    (folder / "bad.png").unlink()
    (folder / "tiny.png").unlink()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0 and "3 images: 0 stylized, 3 skipped (done before), 0 failed" in err


def test_cli_without_ray_installed_names_the_install_command(images, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.startswith("ray") else real(name, *a)
    )
    content, style_path = images
    code = main([str(content), str(style_path), "-o", str(tmp_path), "--ray"])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install "nst-fast[ray]"' in err and err.count("\n") == 1
