"""Scale-out: two replicas of each consumer (classifier, router, notifier), each pair in one
consumer group; kill -9 one of each while appeals flow. The survivor takes over the dead one's
partitions, and every acknowledged appeal still ends routed exactly once (the crash test's checks).

The system runs on a broker and a Redis of its own."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from shared import topics
from shared.bus import group_id
from tests.conftest import eventually
from tests.faults_support import (
    CONSUMERS,
    EVERY,
    LIMIT,
    Submissions,
    admin_client,
    flow_while,
    group_size,
    isolated_system,
    kill_in_turn,
    read_topics,
    settle_and_check,
)

pytestmark = [pytest.mark.integration, pytest.mark.own_system(lane=1), pytest.mark.timeout(900)]

# No restarts here, so the flow is short: a few hundred appeals under load.
# The group that feeds each consumer's main work: the two on the caller's path have a group of
# their own; the notifier reads all its topics in one.
HOT_GROUPS = {
    "classifier": group_id("classifier", topics.APPEAL_RECEIVED),
    "router": group_id("router", topics.APPEAL_CLASSIFIED),
    "notifier": group_id("notifier"),
}


async def groups_of_size(bootstrap: str, size: int) -> bool:
    return all([await group_size(bootstrap, g) == size for g in HOT_GROUPS.values()])


async def test_the_surviving_replica_takes_over_when_one_of_each_consumer_is_killed(settings, tmp_path):
    started = time.monotonic()
    # More partitions than replicas, as a deployment has: each survivor ends with several.
    with isolated_system(settings, tmp_path, kafka_topic_partitions=4) as (system, s):
        keys = system.start_replicas(2)
        await asyncio.to_thread(system.ready, [*keys, "intake"])
        bootstrap = s.kafka_bootstrap_servers
        await eventually(lambda: groups_of_size(bootstrap, 2), timeout=180, interval=1)
        ready = time.monotonic()
        victims = [f"{name}#2" for name in CONSUMERS]
        killed: list[tuple[str, int, int]] = []
        before_last_kill: set[str] = set()

        async def faults(submissions: Submissions) -> None:
            killed.extend(await kill_in_turn(system, victims, submissions, every=EVERY, restart=False))
            before_last_kill.update(submissions.acked)

        async with await admin_client(system, s) as client:
            submissions = await flow_while(client, faults, limit=LIMIT, after=EVERY)
        submitted = time.monotonic()
        report = await settle_and_check(s, submissions)

        # The survivors are the groups' only members now, and what came after the kills, spread
        # over every partition, was handled (checked above) by them alone.
        for name in CONSUMERS:
            assert system.procs[name].poll() is None, f"the surviving {name} exited"
        await eventually(lambda: groups_of_size(bootstrap, 1), timeout=120, interval=1)
        later = set(submissions.acked) - before_last_kill
        assert later, "no appeal was submitted after the last kill"
        flowed = await read_topics(bootstrap, [topics.APPEAL_RECEIVED, topics.APPEAL_CLASSIFIED])
        for topic, records in flowed.items():
            used = {r.partition for r in records if json.loads(r.value)["ticket_no"] in later}
            assert used == set(range(s.kafka_topic_partitions)), f"{topic}: partitions {used}"
    assert [k for k, _, _ in killed] == victims
    print(
        f"\nkilled (process, pid, appeals answered then): {killed}; {len(later)} after the last; "
        f"{report}; start {ready - started:.0f}s, flow {submitted - ready:.0f}s, "
        f"drain+check {time.monotonic() - submitted:.0f}s"
    )
