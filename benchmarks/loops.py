"""(e) the torch backend's whole loop per precision and --graph mode: milliseconds per iteration of a
real run at one scale (evaluation, gradient, update, best-iterate tracking; CUDA-graph capture in
every run), medians of ROUNDS runs of STEPS iterations after a first run, which torch.compile spends
compiling and whose time is recorded too.

    python benchmarks/loops.py --sizes 256,512 --cold-compile --out benchmarks/results/NAME-loops.json

With --cold-compile, torch.compile starts from an empty inductor cache, so that each compile row's
first run includes a compilation from scratch (as a user's first run of a size does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from nst_fast import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--graphs", default="eager,compile" + (",cuda" if torch.cuda.is_available() else ""))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold-compile", action="store_true", help="start from an empty inductor cache")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.cold_compile:
        # Read when inductor is first imported, which no compile has done yet.
        assert "torch._inductor" not in sys.modules
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="nst-fast-inductor-")
    rows = []
    for size in map(int, args.sizes.split(",")):
        for precision in args.precisions.split(","):
            for graph in args.graphs.split(","):
                row = bench.measure_loop(precision, graph, size, args.device, args.steps, args.rounds)
                print(f"{size:5d} px  {precision:5s} {graph:8s} {row['ms_per_iteration_median']:9.1f} ms/iteration")
                rows.append(row)
                # Written after every row, so that a run cut short keeps what it measured.
                facts = {"machine": bench.machine_info(), "cold_compile": args.cold_compile, "loops": rows}
                Path(args.out).write_text(json.dumps(facts, indent=1) + "\n")


if __name__ == "__main__":
    main()
