"""The backend registry (nst_fast.backends): one table that options, plan, info and bench all read, and
each backend's single step, which the benchmarks time, against its own loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nst_fast import Options, Stylizer, bench
from nst_fast.backends import BACKENDS, Backend, get
from nst_fast.cli import main
from nst_fast.errors import OptionsError

CPU = torch.device("cpu")


def test_every_reader_takes_the_backends_from_the_registry(capsys):
    field = next(f for f in dataclasses.fields(Options) if f.name == "backend")
    assert field.metadata["choices"] == tuple(BACKENDS)
    assert {b for b, _ in bench.configurations(CPU)} == {name for name, b in BACKENDS.items() if b.unavailable() is None}
    assert main(["info"]) == 0
    info = capsys.readouterr().out
    assert all(f"{name} (" in info for name in BACKENDS)
    with pytest.raises(OptionsError, match="unknown backend 'tensorrt'; available: reference, torch, onnxruntime"):
        get("tensorrt")


def test_a_backend_that_is_not_installed_says_so():
    missing = Backend("missing", "needs a package that is not there", "nst_fast.nowhere", requires="no_such_package_x")
    assert "no_such_package_x" in missing.unavailable()
    with pytest.raises(OptionsError, match="the missing backend needs the no_such_package_x package"):
        missing.optimize


def _steps_and_loop(backend: str, graph: str = "auto", steps: int = 4):
    """The losses of ``steps`` calls of the backend's make_step, and those its loop reports."""
    content = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(1))
    stylizer = Stylizer(torch.rand(3, 40, 40), size=40, steps=steps, backend=backend, precision="fp32", graph=graph)
    image, loss_fn = stylizer.loss_for(content)
    spec = stylizer.plan(content).scales[-1].loop
    step = stylizer.plan(content).backend.make_step(stylizer.model, loss_fn, image, spec)
    stepped = [step().item() for _ in range(steps)]
    looped = []
    stylizer.stylize_tensor(content, callback=lambda it: looped.append(it.loss))
    return stepped, looped, stylizer


def test_the_engines_step_is_an_iteration_of_its_loop():
    """What the benchmarks time is what the loop repeats: the same iterates, so the same losses."""
    stepped, looped, _ = _steps_and_loop("torch")
    assert stepped == pytest.approx(looped, rel=1e-6) and looped[-1] < looped[0]


def test_the_benchmark_step_honours_graph():
    stepped, looped, stylizer = _steps_and_loop("torch", graph="compile", steps=3)
    assert "_nst_compiled" in stylizer.model.__dict__, "the step ran the compiled network"
    assert stepped == pytest.approx(looped, rel=1e-4)


@pytest.mark.parametrize("backend", ["reference", "onnxruntime"])
def test_the_other_backends_steps_evaluate_the_loop_s_first_loss(backend):
    stepped, looped, _ = _steps_and_loop(backend, steps=2)
    assert stepped[0] == pytest.approx(looped[0], rel=1e-4)
