"""Load test of ``nst-fast serve``: CLIENTS concurrent clients each submit JOBS jobs one after another
(POST /v1/jobs, follow its event stream to the final status, GET the result), against a real server
started for the purpose, with batching on (--batch-size BATCH) and off (--batch-size 1).

Reports requests per second (three requests a job), jobs per second, and the p50/p95 latency from
submission to result received, with the server's own batch sizes and resident memory; written as JSON.

    python benchmarks/serve_load.py --clients 16 --jobs 4 --size 64 --steps 5 \\
        --out benchmarks/results/cpu-epyc-2core-serve-load.json

tests/serve/test_load.py runs :func:`run_load` at CI scale.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

from nst_fast.serve.metrics import parse_samples

FINAL = ("done", "failed", "cancelled")


def make_images(size: int) -> tuple[bytes, bytes]:
    """A content and a style image (PNG bytes) of ``size`` px, made here: the same for every run."""
    import numpy as np

    rng = np.random.default_rng(0)
    made = []
    for shape in ((size * 3 // 4, size, 3), (size, size, 3)):
        buffer = io.BytesIO()
        Image.fromarray((rng.random(shape) * 255).astype("uint8")).save(buffer, format="PNG")
        made.append(buffer.getvalue())
    return made[0], made[1]


def follow(client: httpx.Client, job_id: str, timeout: float) -> dict:
    """Read a job's event stream to its final status event; that event's data."""
    final = None
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as response:
        response.raise_for_status()
        kind = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and kind in ("status", "end"):
                data = json.loads(line[5:])
                if kind == "end" or data["status"] in FINAL:
                    final = data
                    break
    if final is None:
        raise RuntimeError(f"the event stream of job {job_id} ended without a final status")
    return final


def run_load(
    url: str,
    clients: int,
    jobs: int,
    content: bytes,
    style: bytes,
    options: dict,
    headers: dict[str, str] | None = None,
    timeout: float = 600,
) -> dict:
    """Run the load; returns figures and every job's record (id, status, attempts, latency, result size)."""
    records: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client_work(index: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
            start.wait(timeout=timeout)
            for _ in range(jobs):
                began = time.perf_counter()
                try:
                    files = {"content": ("content.png", content), "style": ("style.png", style)}
                    response = client.post("/v1/jobs", files=files, data={"options": json.dumps(options)})
                    response.raise_for_status()
                    job_id = response.json()["id"]
                    final = follow(client, job_id, timeout)
                    result = client.get(f"/v1/jobs/{job_id}/result")
                    result.raise_for_status()
                    record = {
                        "client": index,
                        "id": job_id,
                        "status": final["status"],
                        "attempts": final.get("attempts"),
                        "latency": time.perf_counter() - began,
                        "result_bytes": len(result.content),
                    }
                    with lock:
                        records.append(record)
                except Exception as e:  # noqa: BLE001 — counted and reported
                    with lock:
                        errors.append(f"client {index}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client_work, args=(i,), daemon=True) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    wall = time.perf_counter() - began
    latencies = sorted(r["latency"] for r in records)
    return {
        "clients": clients,
        "jobs_per_client": jobs,
        "jobs_done": sum(r["status"] == "done" for r in records),
        "errors": errors,
        "unfinished_clients": sum(t.is_alive() for t in threads),
        "wall_seconds": wall,
        "requests_per_second": 3 * len(records) / wall,
        "jobs_per_second": len(records) / wall,
        "latency_p50": percentile(latencies, 50),
        "latency_p95": percentile(latencies, 95),
        "jobs": records,
    }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """The server's metrics as {"name{label=value,...}": value}."""
    return parse_samples(httpx.get(f"{url}/metrics", headers=headers, timeout=60).text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=4, help="jobs per client")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="--batch-size of the batching run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="on,off", help="batching on, off, or both (on,off)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from nst_fast import bench
    from nst_fast.atomic import atomic_write_text
    from nst_fast.serve.process import ServerProcess

    content, style = make_images(args.size)
    options = {"size": args.size, "steps": args.steps}
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": bench.machine_info(),
        "options": options,
        "runs": [],
    }
    for mode in args.modes.split(","):
        batch = args.batch if mode == "on" else 1
        with (
            tempfile.TemporaryDirectory() as data,
            ServerProcess(
                [
                    "--data-dir",
                    data,
                    "--device",
                    args.device,
                    "--batch-size",
                    batch,
                    "--max-queue",
                    args.clients * args.jobs,
                ],
                log=Path(data) / "server.log",
            ) as server,
        ):
            server.wait_ready()
            run = run_load(server.url, args.clients, args.jobs, content, style, options)
            metrics = scrape(server.url)
        run.update(
            batching=mode,
            batch_size=batch,
            batches=metrics.get("nst_fast_batch_size_count"),
            mean_batch=metrics["nst_fast_batch_size_sum"] / max(1, metrics["nst_fast_batch_size_count"]),
            resident_mb=metrics.get("nst_fast_memory_bytes{kind=resident}", 0) / 2**20,
            peak_resident_mb=metrics.get("nst_fast_memory_bytes{kind=resident_peak}", 0) / 2**20,
        )
        print(
            f"batching {mode:3s}: {run['jobs_done']}/{args.clients * args.jobs} done, {len(run['errors'])} errors, "
            f"{run['requests_per_second']:.2f} requests/s, p50 {run['latency_p50']:.2f} s, "
            f"p95 {run['latency_p95']:.2f} s, mean batch {run['mean_batch']:.2f}",
            flush=True,
        )
        report["runs"].append(run)
        atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")  # after each run: a cut-short run keeps it


if __name__ == "__main__":
    main()
