"""The state that Ray Serve replicas share (nst_fast.distributed.shared.SharedState), as a plain object, without
Ray: claims by owner, heartbeats and leases, cancellations seen by the running replica, events routed
to the replicas that follow a job."""

from __future__ import annotations

import asyncio
import time

import pytest

from nst_fast.distributed.shared import SharedState
from nst_fast.serve.jobs import CANCELLED, DONE, QUEUED, RUNNING, Job

_LOOP = asyncio.new_event_loop()  # one loop, as in the actor (its waits are bound to it)


def run(coroutine):
    return _LOOP.run_until_complete(coroutine)


def job(job_id: str, batch_key: str | None = None) -> Job:
    return Job(job_id, QUEUED, time.time(), None, None, None, "sha", {}, batch_key, 48, 64, 5, 0, None, None, 0)


@pytest.fixture
def state(tmp_path):
    shared = SharedState(str(tmp_path / "jobs.sqlite3"), lease=0.5, max_attempts=2)
    yield shared
    shared.close()


def call(state, name, *args, **kwargs):
    return run(state.store_call(name, args, kwargs))


def test_claims_are_each_owner_s_and_only_its_owner_finishes_a_job(state):
    for i in range(3):
        assert call(state, "add_job", job(f"j{i}", batch_key="k"), max_queued=3)
    assert not call(state, "add_job", job("j3"), max_queued=3)  # one queue, one limit
    claimed = call(state, "claim", 2, owner="a")
    assert [j.id for j in claimed] == ["j0", "j1"] and {j.owner for j in claimed} == {"a"}
    assert [j.id for j in call(state, "claim", 2, owner="b")] == ["j2"]
    assert call(state, "claim", 2, owner="b") == []  # nothing claimed twice
    assert not call(state, "finish", "j0", DONE, owner="b")  # not b's
    assert call(state, "finish", "j0", DONE, owner="a")
    assert call(state, "finish", "j1", CANCELLED)  # a cancellation, through any replica
    assert call(state, "requeue", ["j2"], owner="a") == 0 and call(state, "requeue", ["j2"], owner="b") == 1


def test_a_replica_hears_of_its_jobs_finished_elsewhere_and_a_silent_one_loses_its_jobs(state):
    for i in range(2):
        call(state, "add_job", job(f"j{i}"))
    call(state, "claim", 1, owner="a")
    call(state, "claim", 1, owner="b")
    assert run(state.heartbeat("a", {"ready": True}, ["j0"])) == {"drop": [], "drain": None}
    call(state, "finish", "j0", CANCELLED)  # through b, say
    assert run(state.heartbeat("a", {}, ["j0"]))["drop"] == ["j0"]
    time.sleep(0.6)  # b is silent for longer than the lease
    run(state.heartbeat("a", {}, []))
    assert call(state, "get_job", "j1").status == QUEUED and call(state, "get_job", "j1").owner is None
    assert set(run(state.live_replicas())) == {"a"}
    assert [j.id for j in call(state, "claim", 1, owner="a")] == ["j1"]
    # b comes back: the job is not its own any more.
    assert run(state.heartbeat("b", {}, ["j1"]))["drop"] == ["j1"]
    # Interrupted max_attempts (2) times: failed, not queued again.
    time.sleep(0.6)
    run(state.heartbeat("b", {}, []))
    assert call(state, "get_job", "j1").status == "failed"
    assert "interrupted 2 times" in call(state, "get_job", "j1").error


def test_events_reach_the_replicas_that_follow_the_job_in_order(state):
    run(state.subscribe("a", "j", None))
    run(state.subscribe("b", "j", 2))
    run(state.subscribe("b", "other", None))
    events = [("j", "progress", {"step": s, "total": 3}) for s in (1, 2, 3)]
    previews = [("j", "preview", {"step": s, "total": 3}) for s in (1, 2, 3)]
    run(state.publish([events[0], previews[0], events[1], previews[1], events[2], previews[2]]))
    run(state.publish([("j", "status", {"status": DONE})]))
    assert run(state.next("a", 0.1)) == [*events, ("j", "status", {"status": DONE})]  # no previews asked
    got = run(state.next("b", 0.1))
    assert [(k, d["step"]) for _, k, d in got if k != "status"] == [
        ("progress", 1), ("progress", 2), ("preview", 2), ("progress", 3), ("preview", 3),
    ]  # fmt: skip
    assert run(state.preview_wishes("j")) == [2]
    assert run(state.next("a", 0.05)) == []  # waited, nothing new
    # A finished job's late progress (its run had not heard yet) is not kept as its progress.
    run(state.publish([("j", "progress", {"step": 4, "total": 3})]))
    assert run(state.last_progress("j")) is None
    assert len(run(state.next("a", 0.05))) == 1  # still sent to a's streams, which ended at "done"
    run(state.unsubscribe("a", "j", None))
    run(state.publish([("j", "progress", {"step": 5, "total": 3})]))
    assert run(state.next("a", 0.05)) == []


def test_running_jobs_of_a_previous_state_wait_one_lease_for_their_replicas(tmp_path):
    first = SharedState(str(tmp_path / "jobs.sqlite3"), lease=0.5)
    run(first.store_call("add_job", (job("j"),)))
    run(first.store_call("claim", (1,), {"owner": "a"}))
    first.close()
    again = SharedState(str(tmp_path / "jobs.sqlite3"), lease=0.5)  # the actor restarted
    run(again.heartbeat("b", {}, []))
    assert run(again.store_call("get_job", ("j",))).status == RUNNING  # a may still run it
    time.sleep(0.6)
    run(again.heartbeat("b", {}, []))
    assert run(again.store_call("get_job", ("j",))).status == QUEUED
    again.close()
