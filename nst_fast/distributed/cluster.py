"""Ray for a run: connected to (or started) for it, and the resources each actor of the pool takes."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import OptionsError
from ..options import Options

INSTALL = 'pip install "nst-fast[ray]"'
# CPUs (and torch threads) per actor on CPU nodes unless --actor-cpus says otherwise: several actors of a
# few threads each keep a node busier than one actor with every thread, since L-BFGS on one image
# leaves cores idle between its passes. A guess, not a measurement: tune it with --actor-cpus.
DEFAULT_ACTOR_CPUS = 4


def check_installed() -> None:
    """Raise :class:`OptionsError`, with the install command, unless Ray Data is installed."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
        raise OptionsError(f"stylizing on Ray needs Ray Data, which is not installed: {INSTALL}")


MIN_RAY_SERVE = (2, 60)  # nst-fast serve --ray: serve.ingress() with the app built in each replica


def check_serve_installed() -> None:
    """Raise :class:`OptionsError`, with the install command, unless Ray Serve (recent enough) is installed."""
    check_installed()
    if importlib.util.find_spec("ray.serve") is None:
        raise OptionsError(f"nst-fast serve --ray needs Ray Serve, which is not installed: {INSTALL}")
    from importlib.metadata import version

    installed = version("ray")
    if tuple(int(p) for p in installed.split(".")[:2] if p.isdigit()) < MIN_RAY_SERVE:
        raise OptionsError(
            f"nst-fast serve --ray needs Ray {'.'.join(map(str, MIN_RAY_SERVE))} or later, not {installed}: {INSTALL}"
        )


@contextmanager
def connected(address: str | None, init_args: dict | None = None) -> Iterator[object]:
    """The ``ray`` module, connected: to the Ray this process is connected to already (left so), else to
    ``address`` (``"auto"``: the cluster this machine belongs to; ``host:port`` or ``ray://host:port``),
    else to a Ray started here for the run; the last two are shut down at the end."""
    check_installed()
    import ray

    if ray.is_initialized():
        yield ray
        return
    init_args = dict(init_args or {})
    if address is None:
        ray.init(include_dashboard=False, **init_args)
    else:
        ray.init(address=address, **init_args)
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class ActorResources:
    """What each actor of the pool reserves, and how many there are."""

    actors: int  # the pool's largest size
    starting: int  # actors started at once: as many as the cluster holds now
    cpus: int  # CPUs per actor: torch's thread count in it
    gpus: int  # 0 on CPU nodes, else 1: one GPU per actor
    reserve_cpus: bool = True  # whether Ray reserves ``cpus`` (on GPU actors, only when asked to)
    role: str = "actor"  # what they are called: "actor" (a collection) or "replica" (the service)

    @property
    def each(self) -> str:
        """What one of them reserves: "1 GPU" or "4 CPUs"."""
        return "1 GPU" if self.gpus else f"{self.cpus} CPU{'s' if self.cpus > 1 else ''}"

    def describe(self) -> str:
        return f"{self.actors} {self.role}{'s' if self.actors > 1 else ''} × {self.each}"


def actor_resources(
    ray, options: Options, actors: int | None, actor_cpus: int | None, tasks: int, role: str = "actor"
) -> ActorResources:
    """One GPU per actor where the cluster has GPUs and the options allow them (``--device auto`` or
    ``cuda``), as many actors as GPUs; else ``actor_cpus`` CPUs each (default: :data:`DEFAULT_ACTOR_CPUS`,
    or the largest node's CPUs if fewer), as many actors as the cluster's CPUs hold. Never more actors
    than ``tasks``. More actors than the cluster holds now is allowed (an autoscaling cluster grows):
    the pool starts with what fits and grows with the cluster. ``role`` names the actors in messages,
    and their flags (``--actors``/``--actor-cpus``; ``"replica"``: ``--replicas``/``--replica-cpus``)."""
    count_flag, cpus_flag = f"--{role}s", f"--{role}-cpus"
    for name, value in ((count_flag, actors), (cpus_flag, actor_cpus)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise OptionsError(f"{name} must be a positive integer, got {value!r}")
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", n.get("alive", False))]
    node_cpus = [int(r.get("CPU", 0)) for r in nodes]
    node_gpus = [int(r.get("GPU", 0)) for r in nodes]
    device = options.device
    if device.startswith("cuda") and ":" in device:
        raise OptionsError(f"on Ray each {role} sees only the GPU it was given: use --device cuda, not {device}")
    use_gpus = device == "cuda" or (device == "auto" and sum(node_gpus) > 0)
    if use_gpus and sum(node_gpus) == 0:
        raise OptionsError("--device cuda asks for GPUs, but the Ray cluster has none; use --device cpu or auto")
    if use_gpus:
        cpus = actor_cpus or 1  # for decoding and encoding images; the GPU does the work
        fits = sum(min(g, c // cpus) for g, c in zip(node_gpus, node_cpus))
    else:
        largest = max(node_cpus, default=0)
        cpus = actor_cpus or max(1, min(DEFAULT_ACTOR_CPUS, largest))
        fits = sum(c // cpus for c in node_cpus)
    if fits == 0:
        what = f"1 GPU and {cpus} CPUs" if use_gpus else f"{cpus} CPUs"
        article = "an" if role[0] in "aeiou" else "a"
        raise OptionsError(
            f"no node of the Ray cluster has {what} for {article} {role} (the largest has "
            f"{max(node_cpus, default=0)} CPUs); lower {cpus_flag}"
        )
    count = max(1, min(actors or fits, tasks))
    return ActorResources(
        actors=count,
        starting=min(count, fits),
        cpus=cpus,
        gpus=1 if use_gpus else 0,
        reserve_cpus=not use_gpus or actor_cpus is not None,
        role=role,
    )
