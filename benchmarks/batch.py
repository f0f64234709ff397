"""(g) images per second against batch size: the torch backend optimizing B content images of one size
together (Stylizer.stylize_many), STEPS iterations at one scale, after a first untimed run.

    NST_FAST_IMAGES=../shared/images python benchmarks/batch.py --sizes 128,256,512 --batches 1,2,4,8 \\
        --out benchmarks/results/NAME-batch.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nst_fast import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="128,256,512")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    for size in map(int, args.sizes.split(",")):
        for batch in map(int, args.batches.split(",")):
            row = bench.measure_batch(batch, size, args.precision, args.device, args.steps, args.rounds)
            print(f"{size:5d} px  batch {batch:2d}  {row['images_per_second']:7.3f} images/s", flush=True)
            rows.append(row)
            # Written after every row, so that a run cut short keeps what it measured.
            Path(args.out).write_text(json.dumps({"machine": bench.machine_info(), "batch": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
