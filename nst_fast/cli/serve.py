"""``nst-fast serve``: run the HTTP service (needs the ``serve`` extra; imported only when it runs); with
``--ray``, as Ray Serve replicas (:mod:`nst_fast.distributed.replicas`, the ``ray`` extra)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from ..errors import OptionsError
from ..options import Options
from .common import EXIT_FAILURE, ArgumentParser, add_option_flags, check_at_least, options_from

EXTRA_MISSING = 'nst-fast serve needs the serve extra: pip install "nst-fast[serve]"'
# Options fields the server sets itself (its own flags below), not job defaults.
SERVER_FIELDS = ("device", "batch_size", "max_pixels")

DESCRIPTION = """\
Serve stylization over HTTP: a job queue with progress streams, batching, limits, Prometheus metrics
and a web page at /. Binds to 127.0.0.1 unless --host says otherwise; prints the URL when ready.
The stylization flags below are the defaults of every job; a request's options change them."""

EPILOG = """\
examples:
  nst-fast serve                                  # http://127.0.0.1:8000/, data in ./nst-fast-data
  nst-fast serve --port 8080 --data-dir /var/lib/nst-fast --token "$(openssl rand -hex 16)"
  nst-fast serve --device cuda --batch-size 8 --size 768 --max-queue 500
  nst-fast serve --ray --replicas 2 --replica-cpus 4    # Ray Serve replicas on a local Ray
  nst-fast serve --ray auto --data-dir /shared/nst-fast # one replica per GPU of this machine's cluster"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="nst-fast serve",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for every one)")
    add("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: %(default)s)")
    add("--data-dir", default="nst-fast-data", help="jobs database, uploads and results (default: %(default)s)")
    add("--device", default="auto", help="device(s) to run jobs on, one worker each: auto, cpu, cuda, cuda:0,cuda:1")
    add(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' on every endpoint but /healthz (default: env NST_FAST_TOKEN)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-queue", type=int, default=100, help="queued jobs; beyond, 429 (default: %(default)s)")
    limits.add_argument(
        "--max-pixels",
        type=int,
        default=2**24,
        help="largest image in pixels: uploads above it are refused before decoding, and so are larger "
        "results (default: %(default)s)",
    )
    limits.add_argument(
        "--max-steps", type=int, default=2000, help="iterations of a job over all its scales (default: %(default)s)"
    )
    limits.add_argument("--max-upload-mb", type=float, default=20.0, help="size of an upload (default: %(default)s)")
    limits.add_argument(
        "--job-timeout", type=float, default=600.0, help="seconds a job may run, then it fails (default: %(default)s)"
    )
    limits.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="compatible jobs optimized together; 1: no batching (default: %(default)s)",
    )
    limits.add_argument(
        "--style-cache", type=int, default=4, help="style × options targets kept in memory (default: %(default)s)"
    )
    limits.add_argument(
        "--retention-hours",
        type=float,
        default=168.0,
        help="hours a finished job and its result are kept (default: %(default)s)",
    )
    limits.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds running jobs get to finish (default: %(default)s)",
    )
    ray = parser.add_argument_group(
        'Ray Serve replicas (needs pip install "nst-fast[ray]")',
        "Several replicas serve as one service: the jobs are in one database (held by an actor on this node), "
        "and --data-dir must be reachable at the same path on every node.",
    )
    ray.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="serve from Ray Serve replicas: alone, on a Ray started here; 'auto', this machine's cluster; "
        "HOST:PORT or ray://HOST:10001, that cluster",
    )
    ray.add_argument(
        "--replicas",
        type=int,
        default=None,
        metavar="N",
        help="replicas (default: one per GPU, else as many as the CPUs hold at --replica-cpus each)",
    )
    ray.add_argument(
        "--replica-cpus",
        type=int,
        default=None,
        metavar="N",
        help="CPUs per replica on CPU nodes, and torch threads in it (default: 4, or the largest node's count)",
    )
    group = parser.add_argument_group("job defaults (also nst_fast.Options fields; a request's options change them)")
    add_option_flags(group, tuple(f.name for f in dataclasses.fields(Options) if f.name not in SERVER_FIELDS))
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        from ..serve import ServeConfig, serve
    except ImportError as e:
        print(f"nst-fast: error: {EXTRA_MISSING} ({e.name} is missing)", file=sys.stderr)
        return EXIT_FAILURE
    if args.ray is None and (args.replicas is not None or args.replica_cpus is not None):
        raise OptionsError("--replicas and --replica-cpus go with --ray")
    check_at_least("--replicas", args.replicas, 1)
    check_at_least("--replica-cpus", args.replica_cpus, 1)
    devices = tuple(d.strip() for d in args.device.split(",") if d.strip())
    if args.ray is not None and len(devices) != 1:
        raise OptionsError("with --ray, --device is one of auto, cpu or cuda: each replica has one device")
    token = args.token if args.token is not None else os.environ.get("NST_FAST_TOKEN") or None
    try:
        config = ServeConfig(
            data_dir=Path(args.data_dir),
            host=args.host,
            port=args.port,
            devices=devices,
            defaults=options_from(args).replace(device=devices[0] if devices else "auto"),
            token=token,
            max_queue=args.max_queue,
            max_pixels=args.max_pixels,
            max_steps=args.max_steps,
            max_upload_mb=args.max_upload_mb,
            job_timeout=args.job_timeout,
            batch_size=args.batch_size,
            style_cache=args.style_cache,
            retention=args.retention_hours * 3600,
            grace=args.grace,
            warmup_delay=float(os.environ.get("NST_FAST_SERVE_WARMUP_DELAY", "0")),
        )
    except ValueError as e:
        raise OptionsError("--" + str(e).replace("_", "-")) from None
    if not 0 <= args.port <= 65535:
        raise OptionsError(f"--port must be between 0 and 65535, got {args.port}")
    if args.ray is not None:
        from ..distributed.cluster import check_serve_installed

        check_serve_installed()  # before importing Ray Serve, with the install command
        from ..distributed.replicas import LEASE, LEASE_ENV, serve_replicas

        return serve_replicas(
            config,
            address=None if args.ray == "local" else args.ray,
            replicas=args.replicas,
            replica_cpus=args.replica_cpus,
            lease=float(os.environ.get(LEASE_ENV, LEASE)),
        )
    return serve(config)
