"""(e) the torch backend's whole loop per precision and --graph mode: milliseconds per iteration of a
real run at one scale (evaluation, gradient, update, best-iterate tracking; CUDA-graph capture in
every run), medians of ROUNDS runs of STEPS iterations after a first run, which torch.compile spends
compiling and whose time is recorded too.

    python benchmarks/loops.py --sizes 256,512 --out benchmarks/results/NAME-loops.json
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    for size in map(int, args.sizes.split(",")):
        for precision in args.precisions.split(","):
            for graph in args.graphs.split(","):
                row = bench.measure_loop(precision, graph, size, args.device, args.steps, args.rounds)
                print(f"{size:5d} px  {precision:5s} {graph:8s} {row['ms_per_iteration_median']:9.1f} ms/iteration")
                rows.append(row)
                # Written after every row, so that a run cut short keeps what it measured.
                Path(args.out).write_text(json.dumps({"machine": bench.machine_info(), "loops": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
