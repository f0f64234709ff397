"""``nst-fast serve --ray``: the HTTP service as a Ray Serve deployment of several replicas.

Each replica is the service of one process (:class:`~nst_fast.serve.service.Service`: the same FastAPI
app through ``serve.ingress``, the same routes, page, limits and worker), except that its job store
and event hub are clients of the one :class:`~.shared.SharedState` actor that the driver starts
(:mod:`.shared`: what is shared, and how jobs are claimed and events relayed). Ray Serve's proxy
spreads the requests over the replicas; any replica answers for any job.

Resources: one GPU per replica where the cluster has GPUs, else ``--replica-cpus`` CPUs each, with
torch's thread count set to match in the replica (:func:`.cluster.actor_resources`, as for the actors
of a collection). A replica counts as started once its warm-up has run; Ray Serve's health check
(:meth:`Replica.check_health`) is the service's readiness.

The driver (:func:`serve_replicas`) runs until SIGTERM or Ctrl-C, then shuts the service down as one
process does — replicas stop taking jobs and answer 503, running jobs get ``--grace`` seconds, the rest
go back in the queue (a second signal: at once) — deletes the deployment, and stops the Ray it started.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

from ray import serve

from ..errors import OptionsError
from ..serve.app import create_app
from ..serve.config import ServeConfig
from ..serve.service import MAX_ATTEMPTS, Service, report_interrupted
from ..serve.storage import DataDir
from .cluster import actor_resources, check_serve_installed, connected
from .shared import LEASE, BusHub, SharedState, StoreClient, _wait

log = logging.getLogger("nst_fast.serve")

APP = "nst-fast"  # the Serve application's name (one per cluster)
STATE_NAME, NAMESPACE = "nst-fast-shared-state", "nst-fast"  # the shared state actor, by name
REPLICA_HEADER = "X-NST-Fast-Replica"  # every answer says which replica gave it
# A request with this header (Ray Serve's model multiplexing) goes to the replica it names: each replica
# registers its own id as its one "model" (Replica.pin).
TARGET_HEADER = "serve_multiplexed_model_id"
MAX_ONGOING_REQUESTS = 256  # per replica: requests are short or wait (event streams), jobs run apart
LEASE_ENV = "NST_FAST_SERVE_LEASE"  # seconds; tests shorten it


def heartbeat_period(lease: float) -> float:
    return min(1.0, lease / 4)


class _ReplicaHeader:
    """ASGI middleware: the replica's id in a header of every answer."""

    def __init__(self, app, replica: str):
        self.app, self.value = app, replica.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-nst-fast-replica", self.value)]}
            await send(message)

        await self.app(scope, receive, send_with_header)


class _Membership:
    """A replica's heartbeat (a thread): tells the shared state it is alive and what it runs; drops the
    jobs it is told are not its own any more; drains the service when the driver shuts it down."""

    def __init__(self, actor, replica: str, service: Service, lease: float):
        self.actor, self.replica, self.service, self.lease = actor, replica, service, lease
        self.drained = False
        self._draining = self._stopping_now = False
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="nst-fast heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def beat(self) -> None:
        """A heartbeat now (what the replica says has changed), not at the end of the period."""
        self._wake.set()

    def info(self) -> dict:
        service = self.service
        return {
            "pid": os.getpid(),
            "node": _node_ip(),
            "devices": [str(d) for d in service.devices],
            "ready": service.ready,
            "failure": service.scheduler.failure,
            "drained": self.drained,
            "running": service.scheduler.running_ids(),
            "runs": service.scheduler.runs_in_progress(),
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            scheduler = self.service.scheduler
            try:
                reply = _wait(
                    self.actor.heartbeat.remote(self.replica, self.info(), scheduler.running_ids()), self.lease
                )
            except Exception:  # noqa: BLE001 — tried again next period
                log.exception("the heartbeat to the shared state failed")
            else:
                if reply["drop"]:
                    scheduler.abandon(reply["drop"])
                drain = reply["drain"]
                if drain and not self._draining:
                    self._draining = True
                    threading.Thread(target=self._drain, args=(drain["grace"],), daemon=True).start()
                if drain and drain.get("now") and not self._stopping_now:
                    self._stopping_now = True
                    threading.Thread(target=scheduler.drain, args=(0,), daemon=True).start()
            self._wake.wait(heartbeat_period(self.lease))
            self._wake.clear()

    def _drain(self, grace: float) -> None:
        self.service.drain(grace)
        self.drained = True
        self.beat()


def _node_ip() -> str:
    import ray

    try:
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001
        return socket.gethostname()


@serve.deployment(name="nst-fast")
@serve.ingress()
class Replica:
    """One replica: a :class:`~nst_fast.serve.service.Service` on the shared state, and its app."""

    async def __init__(self, config: ServeConfig, state, threads: int | None, lease: float):
        if threads:
            import torch

            # This process's CPUs are the ones Ray reserved for the replica, which torch would not know.
            torch.set_num_threads(threads)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.hub = BusHub(state, self.replica)
        self.service = Service(config, store=StoreClient(state, self.replica), hub=self.hub)
        self.membership = _Membership(state, self.replica, self.service, lease)
        self.service.start()  # the app's lifespan starts it again: nothing then
        self.membership.start()
        await self.pin(self.replica)
        # Started, for Ray Serve, once warm: no request reaches a replica before, and its first health check
        # (readiness) passes.
        await asyncio.to_thread(self._wait_warm)
        self.membership.beat()  # ready: said at once

    def _wait_warm(self) -> None:
        scheduler = self.service.scheduler
        while not scheduler.ready.wait(0.2):
            if scheduler.failure:
                self._stop()
                raise RuntimeError(scheduler.failure)

    @serve.multiplexed(max_num_models_per_replica=1)
    async def pin(self, replica: str) -> str:
        """Ray Serve's model multiplexing, to address one replica: each replica "loads" its own id as its
        only model, so the proxy routes a request with the header ``serve_multiplexed_model_id: ID`` to
        replica ID (to another only if that one is gone or full)."""
        return replica

    def __serve_build_asgi_app__(self):
        app = create_app(self.service.config, self.service)
        app.add_middleware(_ReplicaHeader, replica=self.replica)
        return app

    def check_health(self) -> None:
        """Ray Serve's health check: the service's readiness (/readyz), except that a replica shutting
        down is healthy (it must not be replaced while it drains)."""
        service = self.service
        if service.scheduler.failure:
            raise RuntimeError(service.scheduler.failure)
        if not service.ready and not service.draining:
            raise RuntimeError("not ready: the worker is not warm")

    def _stop(self) -> None:
        self.membership.stop()
        self.hub.stop()

    def __del__(self) -> None:
        # After the app's lifespan has ended: the service is closed (its running jobs queued again).
        if hasattr(self, "membership"):
            self._stop()


def serve_replicas(
    config: ServeConfig,
    address: str | None = None,
    replicas: int | None = None,
    replica_cpus: int | None = None,
    lease: float = LEASE,
) -> int:
    """Serve ``config``'s service from Ray Serve replicas until SIGTERM or Ctrl-C; the exit code.

    Ray: ``address`` (``"auto"``, ``"host:port"``, ``"ray://host:10001"``), or a local Ray started here and
    stopped at the end (:func:`.cluster.connected`). ``replicas``: how many (default: one per GPU, else
    as many as the CPUs hold at ``replica_cpus`` each). ``lease``: seconds without a heartbeat after which
    a replica is gone and its running jobs are queued again.
    """
    check_serve_installed()
    if lease <= 0:
        raise OptionsError(f"the lease must be positive, got {lease}")
    with connected(address, {"logging_level": logging.WARNING}) as ray:
        resources = actor_resources(
            ray, config.defaults, replicas, replica_cpus, tasks=replicas or 1_000_000, role="replica"
        )
        if resources.starting < resources.actors:
            raise OptionsError(
                f"the Ray cluster has room for {resources.starting} of the {resources.actors} replicas now "
                f"({resources.each} each); lower --replicas"
            )
        try:
            ray.get_actor(STATE_NAME, namespace=NAMESPACE)
        except ValueError:
            pass
        else:
            raise OptionsError("another nst-fast serve --ray runs on this Ray cluster already")
        device = "cuda" if resources.gpus else "cpu"
        data_dir = Path(config.data_dir).resolve()
        DataDir(data_dir)
        replica_config = config.replace(
            data_dir=data_dir, devices=(device,), defaults=config.defaults.replace(device=device)
        )
        state = _start_state(ray, data_dir, lease)
        stop, now = threading.Event(), threading.Event()
        started_serve = False
        try:
            report_interrupted(*ray.get(state.requeue_gone.remote(True)))
            port = config.port or _free_port(config.host)
            url = f"http://{'[' + config.host + ']' if ':' in config.host else config.host}:{port}/"
            started_serve = not _serve_running(ray)
            serve.start(http_options={"host": config.host, "port": port}, logging_config={"log_level": "WARNING"})
            options = {"num_cpus": resources.cpus if resources.reserve_cpus else 0, "num_gpus": resources.gpus}
            app = Replica.options(
                num_replicas=resources.actors,
                ray_actor_options=options,
                max_ongoing_requests=MAX_ONGOING_REQUESTS,
                max_constructor_retry_count=2,
                graceful_shutdown_timeout_s=max(20.0, config.grace + 10),
            ).bind(replica_config, state, resources.cpus, lease)
            deployed = threading.Event()
            _on_signals(stop, now, deployed)
            try:
                serve.run(app, name=APP, route_prefix="/", logging_config={"log_level": "WARNING"})
            except Exception as e:  # noqa: BLE001 — one line: why the replicas could not start
                raise RuntimeError(f"the replicas could not start: {_reason(e)}") from None
            _wait_routed(url)
            deployed.set()
            print(f"nst-fast: listening on {url}", flush=True)
            print(f"nst-fast: ready at {url} ({resources.describe()})", flush=True)
            stop.wait()
            _drain(ray, state, config.grace, now)
        finally:
            _tear_down(ray, state, started_serve)
    return 0


def _start_state(ray, data_dir: Path, lease: float):
    """The shared state actor, on this node (its database is in the data directory, as seen from here)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    actor = (
        ray.remote(SharedState)
        .options(
            name=STATE_NAME,
            namespace=NAMESPACE,
            num_cpus=0,
            max_restarts=-1,  # a crashed actor comes back on the same database (replicas retry their calls)
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        )
        .remote(str(DataDir(data_dir).database), lease, MAX_ATTEMPTS)
    )
    ray.get(actor.live_replicas.remote())  # started (or its error, here)
    return actor


def _serve_running(ray) -> bool:
    """Whether Ray Serve runs on the cluster already (then it is left running at the end)."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_routed(url: str, timeout: float = 120.0) -> None:
    """Until the proxy routes to the service (/healthz through it answers 200)."""
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=10) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"Ray Serve's proxy did not route {url}healthz within {timeout:g} s")
        time.sleep(0.2)


def _on_signals(stop: threading.Event, now: threading.Event, deployed: threading.Event) -> None:
    """SIGTERM or Ctrl-C: shut down (``stop``); a second one: without grace (``now``). Before the service
    is up, the first one interrupts the start (KeyboardInterrupt; the deployment is torn down)."""

    def handle(signum, frame):
        if not deployed.is_set():
            stop.set()
            raise KeyboardInterrupt
        (now if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)


def _drain(ray, state, grace: float, now: threading.Event) -> None:
    """Replicas stop taking jobs and give running ones ``grace`` seconds (``now``: none left), then stop
    them (queued again); until every replica has drained."""
    log.info("shutting down: no more jobs; running ones get %g s to finish, then go back to the queue", grace)
    ray.get(state.drain.remote(grace))
    end = time.monotonic() + grace + 60
    told_now = False
    while time.monotonic() < end:
        if now.is_set() and not told_now:
            ray.get(state.drain.remote(None))
            told_now = True
        live = ray.get(state.live_replicas.remote())
        if all(info.get("drained") for info in live.values()):
            return
        time.sleep(0.1)
    log.warning("replicas still running jobs after the grace period: they are stopped with the deployment")


def _tear_down(ray, state, started_serve: bool) -> None:
    """Delete the deployment (and Serve, if started here), queue again what is still running, close the
    database, end the shared state actor. Each step even if an earlier one failed."""
    log.info("removing the deployment")
    try:
        if started_serve:
            serve.shutdown()
        else:
            serve.delete(APP)
    except Exception:  # noqa: BLE001
        log.exception("stopping the Ray Serve deployment failed")
    try:
        ray.get(state.requeue_gone.remote(True), timeout=60)
        ray.get(state.close.remote(), timeout=60)
    except Exception:  # noqa: BLE001
        log.exception("closing the job store failed")
    try:
        ray.kill(state)
    except Exception:  # noqa: BLE001
        pass


def _reason(error: BaseException) -> str:
    """The line of a deployment failure that says why (a replica's warm-up error, most often)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "warm-up" in line or line.startswith(("RuntimeError", "OptionsError", "NstError")):
            return line.split("RuntimeError: ", 1)[-1]
    return lines[-1] if lines else type(error).__name__


__all__ = ["APP", "LEASE", "LEASE_ENV", "REPLICA_HEADER", "Replica", "serve_replicas"]
