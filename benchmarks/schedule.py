"""How fast a schedule reaches a fixed quality: the evidence behind the plan's default schedule.

The quality bar is the float32 reference loss (:func:`nst_fast.objective.evaluate_loss`, at full
resolution) of the output that the reference loop (plain float32 PyTorch, torch.optim.LBFGS) gives after
300 iterations at full resolution. ``reference`` runs that loop once per workload and size and records
its time and output loss; ``run`` times a schedule — the defaults, or options changed with ``--set`` —
end to end, and judges its iterates at full resolution off the clock (every ``--judge-every`` iterations
and the output), so that both the time to first reach the bar and the whole run's time and output loss
are known. Results accumulate in one JSON file (``--out``), one record per run.

    python benchmarks/schedule.py reference --size 512
    python benchmarks/schedule.py run --size 512                       # the defaults
    python benchmarks/schedule.py run --size 512 --set pyramid_start=256 steps=200 pyramid_steps=40
    python benchmarks/schedule.py table                                # what the file holds, as a table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from nst_fast import Options, Stylizer, __version__
from nst_fast.bench.machine import default_images, machine_info
from nst_fast.image import load_image
from nst_fast.objective import evaluate_loss
from nst_fast.options import value_type

FIELDS = {f.name: f for f in dataclasses.fields(Options)}
RESULTS = Path(__file__).parent / "results"
IMAGES = Path(os.environ.get("NST_FAST_IMAGES", Path(__file__).resolve().parents[2] / "shared" / "images"))
WORKLOADS = {
    "tubingen-starry": ("tubingen.jpg", "starry_night.jpg"),
    "golden_gate-scream": ("golden_gate.jpg", "the_scream.jpg"),
    "sample": None,  # the built-in pair, what `nst-fast` runs without arguments
}


def workload_images(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if WORKLOADS[name] is None:
        return default_images()
    content, style = WORKLOADS[name]
    return load_image(IMAGES / content), load_image(IMAGES / style)


def parse_sets(pairs: list[str]) -> dict:
    """``name=value`` pairs as Options fields, typed by the field's declared type."""
    changes = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        kind = value_type(FIELDS[name])
        convert = {"int": int, "float": float, "bool": lambda t: t == "true"}.get(kind, str)
        changes[name] = None if text == "none" else convert(text)
    return changes


class Judge:
    """The float32 reference loss at full resolution of images of one content image."""

    def __init__(self, content, style, size: int):
        self.stylizer = Stylizer(style, Options(size=size, backend="reference", device="cpu"))
        _, self.loss = self.stylizer.loss_for(content)

    def __call__(self, image: torch.Tensor) -> float:
        return float(evaluate_loss(self.stylizer.model, self.loss, image)["total"])


def run_once(workload: str, size: int, changes: dict, judge_every: int, target: float | None) -> dict:
    content, style = workload_images(workload)
    options = Options(size=size, device="cpu").replace(**changes)
    judge = Judge(content, style, size)
    stylizer = Stylizer(style, options)
    plan = stylizer.plan(content)
    final_shape = (plan.scales[-1].height, plan.scales[-1].width)
    trace, judged = [], []
    paused = 0.0
    final_scale_from = plan.total_steps - plan.scales[-1].iterations

    def watch(it):
        nonlocal paused
        trace.append((it.step, round(it.elapsed - paused, 4), it.loss))
        if it.step > final_scale_from and (it.step - final_scale_from) % judge_every == 0:
            t0 = time.perf_counter()
            assert tuple(it.image.shape[-2:]) == final_shape
            judged.append((it.step, round(it.elapsed - paused, 4), judge(it.image)))
            paused += time.perf_counter() - t0

    t0 = time.perf_counter()
    output = stylizer.stylize_tensor(content, watch, plan=plan)
    seconds = time.perf_counter() - t0 - paused
    loss = judge(output)
    reached = next(((s, t) for s, t, v in judged if target is not None and v <= target), None)
    return {
        "kind": "reference" if options.backend == "reference" else "run",
        "workload": workload,
        "size": size,
        "changes": changes,
        "precision": plan.precision.name,
        "scales": [[s.size, s.steps] for s in plan.scales],
        "seconds": round(seconds, 3),
        "output_loss": loss,
        "target": target,
        "reached": None if reached is None else {"step": reached[0], "seconds": reached[1]},
        "judged": judged,
        "trace": trace,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"machine": machine_info(), "records": []}


def save(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def reference_of(data: dict, workload: str, size: int, steps: int = 300) -> dict | None:
    found = [
        r
        for r in data["records"]
        if r["kind"] == "reference" and r["workload"] == workload and r["size"] == size and r["scales"][-1][1] == steps
    ]
    return found[-1] if found else None


def reference_seconds(ref: dict) -> float:
    """The reference's time for its iterations: their number × its median iteration, which other work
    on the machine slowing some iterations does not move (its wall time is in ``seconds``)."""
    times = [b[1] - a[1] for a, b in zip(ref["trace"], ref["trace"][1:])]
    return statistics.median(times) * len(ref["trace"])


def table(data: dict) -> str:
    lines = [
        "| workload | size | schedule (size×steps) | precision | seconds | ÷ reference | output loss | ÷ bar "
        "| bar first reached: step, ÷ reference |"
    ]
    lines.append("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | --- |")
    for r in data["records"]:
        ref = reference_of(data, r["workload"], r["size"])
        ratio = f"{r['seconds'] / reference_seconds(ref):.3f}" if ref else "–"
        bar = f"{r['output_loss'] / ref['output_loss']:.4f}" if ref else "–"
        sched = " → ".join(f"{s}×{n}" for s, n in r["scales"])
        changes = [f"{k}={v}" for k, v in r["changes"].items() if k != "backend"]
        extra = ", ".join(changes + [r.get("label") or r.get("note", "")])
        extra = extra.strip(", ")
        hit = r.get("reached")
        reached = f"{hit['step']}, {hit['seconds'] / reference_seconds(ref):.3f}" if hit and ref else "–"
        lines.append(
            f"| {r['workload']} | {r['size']} | {sched}{' (' + extra + ')' if extra else ''} | {r['precision']} "
            f"| {r['seconds']:.1f} | {ratio} | {r['output_loss']:.4f} | {bar} | {reached} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("reference", "run", "table"))
    parser.add_argument("--workload", default="tubingen-starry", choices=tuple(WORKLOADS))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE")
    parser.add_argument("--judge-every", type=int, default=5)
    parser.add_argument("--label", help="a note kept with the record (e.g. what the run's inductor cache held)")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu-epyc-2core-schedule.json")
    args = parser.parse_args()
    data = load(args.out)
    if args.what == "table":
        print(table(data))
        return
    if args.what == "reference":
        changes = {"backend": "reference", "steps": 300, "pyramid_start": 0, **parse_sets(args.set)}
        record = run_once(args.workload, args.size, changes, judge_every=10**9, target=None)
    else:
        ref = reference_of(data, args.workload, args.size)
        target = ref["output_loss"] if ref else None
        record = run_once(args.workload, args.size, parse_sets(args.set), args.judge_every, target)
    record["versions"] = {"nst_fast": __version__, "torch": torch.__version__, "python": platform.python_version()}
    if args.label:
        record["label"] = args.label
    data["records"].append(record)
    save(args.out, data)
    reached = record["reached"]
    print(
        f"{record['kind']} {args.workload} {args.size}px {record['scales']} {record['precision']}: "
        f"{record['seconds']:.1f} s, output loss {record['output_loss']:.5f}"
        + (
            f", bar {record['target']:.5f} first reached at step {reached['step']} after {reached['seconds']:.1f} s"
            if reached
            else ""
        )
    )


if __name__ == "__main__":
    main()
