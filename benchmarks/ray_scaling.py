"""A collection on Ray against one process: IMAGES content images at SIZE px, stylized by the real command
three ways, with the same images, style, options and seed:

- ``plain``: ``nst-fast DIR STYLE -o OUT`` (one process, every core);
- ``ray-1x2``: ``--ray --actors 1 --actor-cpus 2`` (a local Ray started by the command, one actor);
- ``ray-2x1``: ``--ray --actors 2 --actor-cpus 1`` (two actors of one CPU each).

Each run is a fresh command in a fresh output directory, timed from its start to its exit (what a user
waits for: the Ray runs include starting Ray and the actors). From the outputs' modification times it
also reports the start-up (start to the first output written) and the steady rate (images per second
after the first batch, to the last output). The Ray path's overhead is each Ray run's wall time minus the plain
run's. Written as JSON with the machine (nst_fast.bench.machine_info).

    python benchmarks/ray_scaling.py --out benchmarks/results/NAME-ray-scaling.json   # 24 × 128 px
    python benchmarks/ray_scaling.py --dry-run                                         # 4 × 64 px, 2 steps

The content images are crops of the photos in ../shared/images (NST_FAST_IMAGES), all of one shape
(so that every batch is full), or of the built-in sample photograph when the folder is absent; the style
is starry_night.jpg (or the built-in painting).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

PHOTOS = ("tubingen.jpg", "golden_gate.jpg", "hoovertowernight.jpg", "shipwreck.jpg")
MODES = {
    "plain": [],
    "ray-1x2": ["--ray", "--actors", "1", "--actor-cpus", "2"],
    "ray-2x1": ["--ray", "--actors", "2", "--actor-cpus", "1"],
}


def make_images(folder: Path, count: int, size: int) -> tuple[list[Path], Path, str]:
    """``count`` content images of size × 3/4 size (PNG, crops of the photos at several places) and the
    style image, in ``folder``; and where they came from."""
    from nst_fast.samples import sample_content, sample_style

    source = Path(os.environ.get("NST_FAST_IMAGES", Path(__file__).resolve().parents[2] / "shared" / "images"))
    photos = [source / name for name in PHOTOS if (source / name).is_file()]
    if photos and (source / "starry_night.jpg").is_file():
        pictures = [Image.open(p).convert("RGB") for p in photos]
        style = Image.open(source / "starry_night.jpg").convert("RGB")
        origin = f"crops of {', '.join(p.name for p in photos)}; style starry_night.jpg"
    else:
        pictures, style = [sample_content()], sample_style()
        origin = "crops of the built-in sample photograph; style the built-in painting"
    width, height = size, size * 3 // 4
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        picture = pictures[i % len(pictures)]
        # Crops of 60–90% of the picture, moving across it: every image differs, all have one shape.
        k = i // len(pictures)
        scale = 0.6 + 0.3 * ((k * 7) % 10) / 10
        crop_w = int(picture.width * scale)
        crop_h = min(picture.height, int(crop_w * 3 / 4))
        left = (picture.width - crop_w) * ((k * 3) % 5) // 4
        top = (picture.height - crop_h) * ((k * 2) % 3) // 2
        crop = picture.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.LANCZOS)
        path = folder / f"c{i:03d}.png"
        crop.save(path)
        paths.append(path)
    style_path = folder.parent / "style.png"
    style.save(style_path)
    return paths, style_path, origin


def run_once(mode: str, contents: Path, style: Path, out: Path, options: list[str], batch: int, timeout: float) -> dict:
    """One command, timed; its outputs' times (``batch``: images written together, as one batch)."""
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "nst_fast", str(contents), str(style), "-o", str(out), "-q", *options]
    command += MODES[mode]
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.time() - start
    if done.returncode != 0:
        raise RuntimeError(f"{mode} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    written = sorted(p.stat().st_mtime for p in out.glob("*.png"))
    count = len(written)
    # After the first batch is written, the other images took the time to the last one.
    steady = (count - batch) / (written[-1] - written[0]) if count > batch and written[-1] > written[0] else None
    return {
        "mode": mode,
        "command": " ".join(["nst-fast", *command[3:]]),
        "images": count,
        "wall_s": round(wall, 3),
        "images_per_second": round(count / wall, 4),
        "startup_s": round(written[0] - start, 3) if written else None,
        "steady_images_per_second": None if steady is None else round(steady, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="runs of each mode (the modes interleaved)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one run may take")
    parser.add_argument("--out", help="the JSON record (required unless --dry-run)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="4 images at 64 px, 2 steps, one round: that the script works (the record: a temporary file unless --out)",
    )
    args = parser.parse_args()
    if args.dry_run:
        args.images, args.size, args.steps, args.rounds = 4, 64, 2, 1
    elif not args.out:
        parser.error("--out is required (or --dry-run)")
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; known: {', '.join(MODES)}")
    from nst_fast import __version__, bench
    from nst_fast.atomic import atomic_write_text

    options = [
        "--size", str(args.size), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--precision", args.precision, "--seed", str(args.seed), "--device", "cpu",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="nst-fast-ray-scaling-") as tmp:
        contents, style, origin = make_images(Path(tmp) / "contents", args.images, args.size)
        record = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "nst_fast": __version__,
            "machine": bench.machine_info(),
            "workload": {
                "images": len(contents),
                "shape": [args.size * 3 // 4, args.size],
                "source": origin,
                "options": options,
                "batch_size": args.batch_size,
            },
            "dry_run": args.dry_run,
            "runs": [],
        }
        out = Path(args.out) if args.out else Path(tmp) / "ray-scaling.json"
        for round_ in range(args.rounds):
            for mode in modes:
                out_dir = Path(tmp) / f"out-{mode}-{round_}"
                run = run_once(mode, contents[0].parent, style, out_dir, options, args.batch_size, args.timeout)
                run["round"] = round_
                record["runs"].append(run)
                print(
                    f"{mode:8s} round {round_}: {run['images']} images in {run['wall_s']:.1f} s = "
                    f"{run['images_per_second']:.3f} images/s (first after {run['startup_s']:.1f} s, then "
                    f"{run['steady_images_per_second'] or float('nan'):.3f} images/s)",
                    flush=True,
                )
                record["summary"] = _summary(record["runs"])
                atomic_write_text(out, json.dumps(record, indent=1) + "\n")  # after each run: a cut-short run keeps it
        for line in _summary_lines(record["summary"]):
            print(line)
        print(f"written: {out}" + ("" if args.out else " (a temporary file, removed)"))


def _summary(runs: list[dict]) -> dict:
    """Per mode: the median wall time and images/s over its rounds; the Ray modes' overhead against plain."""
    by_mode: dict[str, list[dict]] = {}
    for run in runs:
        by_mode.setdefault(run["mode"], []).append(run)
    summary = {
        mode: {
            "wall_s": round(statistics.median(r["wall_s"] for r in rs), 3),
            "images_per_second": round(statistics.median(r["images_per_second"] for r in rs), 4),
            "startup_s": round(statistics.median(r["startup_s"] for r in rs), 3),
            "rounds": len(rs),
        }
        for mode, rs in by_mode.items()
    }
    if "plain" in summary:
        for mode, values in summary.items():
            if mode != "plain":
                values["overhead_s"] = round(values["wall_s"] - summary["plain"]["wall_s"], 3)
    return summary


def _summary_lines(summary: dict) -> list[str]:
    lines = []
    for mode, v in summary.items():
        extra = f", overhead against plain {v['overhead_s']:+.1f} s" if "overhead_s" in v else ""
        lines.append(f"{mode:8s}: median {v['wall_s']:.1f} s, {v['images_per_second']:.3f} images/s{extra}")
    return lines


if __name__ == "__main__":
    main()
