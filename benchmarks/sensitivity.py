"""(h) How far rounding carries an optimization: the fp32 reference loss after STEPS iterations of the
engine, for an image alone, the same image moved by 1e-7, and the same image in a batch of three —
the measurement behind what tests/test_batch.py asks of a batch (benchmarks/NOTES.md §11).

    python benchmarks/sensitivity.py --out benchmarks/results/NAME-sensitivity.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nst_fast import Stylizer, bench
from nst_fast.objective import build_loss, evaluate_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    style = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(21))
    gen = torch.Generator().manual_seed(20)
    contents = [torch.rand(1, 3, 48, 64, generator=gen) for _ in range(3)]
    rows = []
    # The bf16 runs of 8 and 60 steps from the content are what README's "Use in a service" and
    # tests/test_batch.py's bf16 bound rest on: far apart early, close once the runs settle.
    configurations = (
        ("fp32", "lbfgs", 15, "content+noise"),
        ("fp32", "adam", 15, "content+noise"),
        ("bf16", "lbfgs", 5, "content+noise"),
        ("bf16", "lbfgs", 8, "content+noise"),
        ("bf16", "lbfgs", 60, "content"),
    )
    for precision, optimizer, steps, init in configurations:
        stylizer = Stylizer(style, size=64, steps=steps, precision=precision, optimizer=optimizer, init=init)
        batched = stylizer.stylize_many(contents, batch_size=3)
        for i, content in enumerate(contents):
            judge = build_loss(stylizer.model, content, stylizer.style_targets, stylizer.options)

            def loss(image: torch.Tensor, judge=judge) -> float:
                return evaluate_loss(stylizer.model, judge, image)["total"]

            moved = (content + 1e-7 * torch.randn(content.shape, generator=gen)).clamp(0, 1)
            alone = loss(stylizer.stylize_tensor(content))
            row = {
                "precision": precision,
                "optimizer": optimizer,
                "steps": steps,
                "init": init,
                "image": i,
                "alone": alone,
                "moved_1e-7": loss(stylizer.stylize_tensor(moved)),
                "in_batch_of_3": loss(batched[i]),
            }
            rows.append(row)
            print(
                f"{precision} {optimizer:5s} {steps:2d} steps from {init}, image {i}: moved by 1e-7 "
                f"{abs(row['moved_1e-7'] / alone - 1):.1e}, in a batch {abs(row['in_batch_of_3'] / alone - 1):.1e}"
            )
    Path(args.out).write_text(json.dumps({"machine": bench.machine_info(), "sensitivity": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
