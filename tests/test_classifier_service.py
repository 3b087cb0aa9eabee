"""The classifier in the running system, on the real broker and Redis: the review queue and a
reviewer's correction through the API, and switching to a newly approved model without a restart."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from services.classifier import corpus, service
from services.classifier.model import CategoryModel, latest_model_path, model_path
from shared import topics
from shared.auth import issue_token
from shared.bus import group_session
from tests.cities import demo_city
from tests.conftest import ROOT, eventually, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("as_dispatch_desk")]

# No place at all, and garbage is one street's in one grid (the responsibility list): no grid, so it
# waits for a person. (A streetlight with no place is the district's wherever it is: routed.)
PLACELESS = "楼下的垃圾好几天没人清运了，臭气熏天，苍蝇到处飞"


async def submit(api: httpx.AsyncClient, text: str, **extra) -> str:
    r = await api.post(
        "/api/v1/appeals", json={"channel": "web", "caller_phone": "13700001234", "text": text, **extra}
    )
    assert r.status_code == 201, r.text
    return r.json()["ticket_no"]


async def test_a_reviewers_correction_is_stored_and_published(api, redis, settings, tmp_path):
    admin = {"Authorization": f"Bearer {await issue_token(redis, 'admin')}"}
    no = await submit(api, PLACELESS)

    async def listed():
        r = await api.get("/api/v1/review", headers=admin)
        assert r.status_code == 200, r.text
        return [i for i in r.json()["items"] if i["ticket_no"] == no]

    [item] = await eventually(listed)
    assert item["grid"]["grid"] is None
    paged = (await api.get("/api/v1/review", headers=admin, params={"page": 1, "size": 1})).json()
    assert (paged["page"], paged["size"], len(paged["items"])) == (1, 1, 1)
    assert paged["count"] >= 1
    assert item["model_version"]
    assert len(item["top"]) == 2
    assert (await api.get("/api/v1/review", headers={"Authorization": ""})).status_code == 401

    bad = await api.post(f"/api/v1/review/{no}", json={"category": "city"}, headers=admin)
    assert bad.status_code == 422
    assert "末级分类" in bad.json()["message"]
    no_grid = await api.post(
        f"/api/v1/review/{no}", json={"category": "city.appearance.garbage"}, headers=admin
    )
    assert no_grid.status_code == 422
    assert no_grid.json()["error"] == "grid_required"

    consumer = AIOKafkaConsumer(
        topics.APPEAL_CLASSIFIED,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"test-review-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        **group_session(settings),  # joins as soon as the workers do
    )
    await consumer.start()
    try:
        r = await api.post(
            f"/api/v1/review/{no}",
            json={"category": "city.appearance.garbage", "grid": "s01c01g01"},
            headers=admin,
        )
        assert r.status_code == 200, r.text
        assert r.json()["category_names"] == ["城市管理", "市容环境", "垃圾清运"]

        stored = json.loads(await redis.get(f"feedback:ticket:{no}"))
        assert (stored["label"], stored["grid"], stored["source"], stored["text"]) == (
            "city.appearance.garbage",
            "s01c01g01",
            "review",
            PLACELESS,
        )

        async def corrected():
            batches = await consumer.getmany(timeout_ms=500)
            for record in (rec for recs in batches.values() for rec in recs):
                event = json.loads(record.value)
                if event["ticket_no"] == no and event.get("reviewed_by"):
                    return event
            return None

        event = await eventually(corrected)
        assert event["event_id"] == r.json()["event_id"]
        assert event["category"] == "city.appearance.garbage"
        assert event["confidence"] == 1.0
        assert event["grid"]["grid"] == "s01c01g01"
        assert event["grid"]["method"] == "reviewer"
        assert not event["needs_review"]
        assert event["reviewed_by"] == "admin"
    finally:
        await consumer.stop()

    assert not await listed()  # reviewed appeals leave the queue
    again = await api.post(
        f"/api/v1/review/{no}", json={"category": "city.appearance.garbage"}, headers=admin
    )
    assert again.status_code == 404

    # The correction becomes training data: `appeals train --include-feedback` picks it up.
    data = tmp_path / "small.jsonl"
    records = corpus.generate(demo_city(), per_category=4, seed=21)
    corpus.write_jsonl(records, data)
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "services.cli",
            "train",
            "--data",
            str(data),
            "--include-feedback",
            "--out",
            str(tmp_path / "models"),
        ],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    added = int(out.stdout.split("added ")[1].split()[0])
    assert added >= 1
    meta = CategoryModel.load(latest_model_path(tmp_path / "models")).metadata
    assert len(records) < meta["n_train"] <= len(records) + added  # (a label seen once is left out)


async def test_the_classifier_switches_to_a_newly_approved_model_without_a_restart(api, redis, settings):
    model = CategoryModel.load(latest_model_path(settings.model_dir))
    version = f"reload-{uuid.uuid4().hex[:8]}"
    model.metadata = {**model.metadata, "version": version}
    model.save(settings.model_dir)
    await service.approve(redis, settings.model_dir, version)

    async def tagged_with_new_model():
        no = await submit(api, "阳光花园3号楼门口的路灯坏了一个多星期了", address="阳光花园3号楼")

        async def ticket():
            r = await api.get(f"/api/v1/tickets/{no}")
            return r.json() if r.status_code == 200 and r.json().get("model_version") else None

        return (await eventually(ticket))["model_version"] == version

    assert await eventually(tagged_with_new_model, timeout=60, interval=0.5)
    with pytest.raises(FileNotFoundError):
        await service.approve(redis, settings.model_dir, "no-such-version")


async def test_the_preview_and_the_worker_agree_after_a_new_model_is_approved(api, redis, settings):
    """The hotline preview serves the approved model with the city's cues, as the workers do: after
    an approval, an operator is shown the suggestion the pipeline then makes."""
    previous = await service.approved_version(redis)
    model = CategoryModel.load(latest_model_path(settings.model_dir))
    # Named to sort first: the approved model is not the newest file (which the preview used to take).
    version = f"0-preview-{uuid.uuid4().hex[:8]}"
    model.metadata = {**model.metadata, "version": version}
    model.save(settings.model_dir)
    assert latest_model_path(settings.model_dir) != model_path(settings.model_dir, version)
    await service.approve(redis, settings.model_dir, version)
    body = {
        "channel": "web",
        "caller_phone": "13700004321",
        "text": "阳光花园3号楼门口的路灯坏了一个多星期了，晚上出门黑漆漆的",
        "address": "阳光花园3号楼",
    }
    try:

        async def routed_by_the_new_model():
            no = await submit(api, body["text"], address=body["address"])

            async def ticket():
                r = await api.get(f"/api/v1/tickets/{no}")
                t = r.json() if r.status_code == 200 else {}
                return t if t.get("model_version") and t.get("department") else None

            t = await eventually(ticket)
            return t if t["model_version"] == version else None

        ticket = await eventually(routed_by_the_new_model, timeout=60, interval=0.5)
        r = await api.post("/api/v1/appeals/preview", json=body)
        assert r.status_code == 200, r.text
        preview = r.json()
        assert preview["category"]["model_version"] == version
        assert preview["category"]["id"] == ticket["category"]
        assert preview["category"]["confidence"] == ticket["confidence"]
        assert preview["grid"]["grid"] == ticket["grid"]["grid"]
        assert preview["appeal_type"] == ticket["appeal_type"]
        assert preview["department"]["id"] == ticket["department"]["id"]
    finally:
        if previous is None:
            await redis.delete(service.APPROVED_KEY)
        else:
            await service.approve(redis, settings.model_dir, previous)
