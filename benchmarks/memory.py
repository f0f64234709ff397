"""(f) the memory estimate against the allocator's peak: a run at one scale per size, precision and
--checkpoint setting, the first run of a fresh model as a CLI run is. Both figures leave out what is
loaded before the run (the network's weights; on a CPU, the content image); on a CPU the peak is the
torch allocator's, from the profiler's memory events, on a GPU the CUDA allocator's.

    python benchmarks/memory.py --sizes 256,512,1024 --out benchmarks/results/NAME-memory.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nst_fast import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,512,1024")
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--checkpoint", default="off,on")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    for size in map(int, args.sizes.split(",")):
        for precision in args.precisions.split(","):
            for checkpoint in args.checkpoint.split(","):
                row = bench.measure_memory(size, precision, checkpoint, args.device, args.steps)
                print(
                    f"{size:5d} px  {precision:5s} checkpoint {checkpoint:3s}  estimate "
                    f"{row['estimate_bytes'] / 2**20:8.0f} MiB  peak {row['peak_bytes'] / 2**20:8.0f} MiB  "
                    f"{row['estimate_over_peak']:.2f}×",
                    flush=True,
                )
                rows.append(row)
                # Written after every row, so that a run cut short keeps what it measured.
                facts = {"machine": bench.machine_info(), "memory": rows}
                Path(args.out).write_text(json.dumps(facts, indent=1) + "\n")


if __name__ == "__main__":
    main()
