"""lcm-api against real Redis and S3, uvicorn in a subprocess (no worker: jobs stay queued)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ApiProcess, api_env, start_api, stop_api

#: The API processes' LCM_API_KEY_CACHE_S here: a revoked key reads for at most this long.
KEY_CACHE_S = 1.0


@pytest.fixture(scope="module")
def api(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    tmp = tmp_path_factory.mktemp("api")
    # A queue no worker consumes: every job the tests submit stays queued.
    env = api_env(
        service_env,
        f"lcm.test.api.{uuid.uuid4().hex[:8]}",
        LCM_MAX_BODY_BYTES="65536",
        LCM_API_KEY_CACHE_S=str(KEY_CACHE_S),
    )
    proc = start_api(env, tmp / "api.log")
    yield proc
    stop_api(proc)


@pytest.fixture(scope="module")
def key(api: ApiProcess) -> str:
    return api.create_key("alice")


def client(api: ApiProcess, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=api.url, headers=headers, timeout=30)


def error_of(answer: httpx.Response) -> dict[str, Any]:
    body = answer.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def test_submit_is_accepted_and_reads_queued(api: ApiProcess, key: str) -> None:
    with client(api, key) as c:
        answer = c.post("/v1/jobs", json={"prompt": "a red circle on a blue background", "seed": 7})
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["status_url"].endswith(f"/v1/jobs/{body['id']}")
        got = c.get(f"/v1/jobs/{body['id']}")
        assert got.status_code == 200, got.text
        view = got.json()
        assert view["state"] == "queued" and view["job"]["seed"] == 7
        assert view["created_at"] <= time.time() and view["result"] is None
        assert view["job_class"] == "interactive"  # a single job


def test_idempotency_key_same_body_same_job_other_body_409(api: ApiProcess, key: str) -> None:
    idem = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    with client(api, key) as c:
        first = c.post("/v1/jobs", json={"prompt": "a cat"}, headers=idem)
        again = c.post("/v1/jobs", json={"prompt": "a cat"}, headers=idem)
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"]
        other = c.post("/v1/jobs", json={"prompt": "a dog"}, headers=idem)
        assert other.status_code == 409, other.text
        error = error_of(other)
        assert error["param"] == "Idempotency-Key" and first.json()["id"] in error["message"]
        # Without the header, the same body is a new job.
        assert c.post("/v1/jobs", json={"prompt": "a cat"}).json()["id"] != first.json()["id"]


def test_keys_see_only_their_own_jobs_admin_sees_all(api: ApiProcess, key: str) -> None:
    bob, admin = api.create_key("bob"), api.create_key("root", "--admin")
    with client(api, key) as alice_c, client(api, bob) as bob_c, client(api, admin) as admin_c:
        job_id = alice_c.post("/v1/jobs", json={"prompt": "mine"}).json()["id"]
        for answer in (bob_c.get(f"/v1/jobs/{job_id}"), bob_c.delete(f"/v1/jobs/{job_id}")):
            assert answer.status_code == 404, answer.text
            assert error_of(answer)["param"] == "job_id"
        assert bob_c.get(f"/v1/jobs/{job_id}/events").status_code == 404
        # Bob cannot take Alice's id for a job of his either.
        taken = bob_c.post("/v1/jobs", json={"prompt": "x", "job_id": job_id})
        assert taken.status_code == 409 and error_of(taken)["param"] == "job_id"
        assert alice_c.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
        assert admin_c.get(f"/v1/jobs/{job_id}").status_code == 200
        # Alice cancels her queued job; a second cancel is 409 and names the state.
        done = alice_c.delete(f"/v1/jobs/{job_id}")
        assert done.status_code == 200 and done.json()["state"] == "canceled"
        again = alice_c.delete(f"/v1/jobs/{job_id}")
        assert again.status_code == 409 and "canceled" in error_of(again)["message"]


def test_no_key_bad_key_revoked_key_are_401(api: ApiProcess) -> None:
    doomed = api.create_key("doomed")
    with client(api, None) as c:
        assert c.get("/v1/jobs/x").status_code == 401
    with client(api, "lcm_0123456789abcdef_" + "x" * 43) as c:
        answer = c.get("/v1/jobs/x")
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    with client(api, doomed) as c:
        assert c.get("/v1/jobs/x").status_code == 404
        key_id = doomed.split("_")[1]
        from tests.integration.conftest import run_cli

        run_cli("producer.http.cli", "keys", "revoke", key_id, env=api.env)
        # A submit is refused at once: the submission script reads the key's record itself.
        refused = c.post("/v1/jobs", json={"prompt": "after revocation"})
        assert refused.status_code == 401 and error_of(refused)["code"] == "invalid_api_key"
        # Every other request once the process's cached check is older than its bound (the
        # slack is for a loaded machine, not part of the bound).
        deadline = time.monotonic() + KEY_CACHE_S + 10
        while (got := c.get("/v1/jobs/x").status_code) != 401:
            assert got == 404 and time.monotonic() < deadline
            time.sleep(0.1)
    listing = run_cli("producer.http.cli", "keys", "list", env=api.env).stdout
    assert key_id in listing and doomed not in listing


def test_rate_limit_answers_429_with_retry_after(api: ApiProcess) -> None:
    slow = api.create_key("slow", "--rate-per-minute", "3")
    with client(api, slow) as c:
        codes = [c.get("/v1/jobs/none").status_code for _ in range(5)]
        assert codes[:3] == [404, 404, 404] and codes[3:] == [429, 429]
        answer = c.get("/v1/jobs/none")
        assert answer.status_code == 429 and 1 <= int(answer.headers["retry-after"]) <= 60
        assert error_of(answer)["type"] == "rate_limit_error"


def test_jobs_in_flight_limit_answers_429(api: ApiProcess) -> None:
    few = api.create_key("few", "--max-in-flight", "2")
    with client(api, few) as c:
        ids = [c.post("/v1/jobs", json={"prompt": f"p{i}"}).json()["id"] for i in range(2)]
        third = c.post("/v1/jobs", json={"prompt": "p2"})
        assert third.status_code == 429 and third.headers["retry-after"]
        assert error_of(third)["code"] == "too_many_jobs_in_flight"
        assert c.delete(f"/v1/jobs/{ids[0]}").status_code == 200
        assert c.post("/v1/jobs", json={"prompt": "p3"}).status_code == 202
        big = c.post("/v1/batches", json={"jobs": [{"prompt": "a"}] * 3})
        assert big.status_code == 400 and error_of(big)["param"] == "jobs"


@pytest.mark.parametrize(
    ("body", "param", "value"),
    [
        ({"prompt": "x", "steps": 9}, "steps", 9),
        ({"prompt": "x", "width": 65, "height": 64}, "width", 65),
        ({"prompt": ""}, "prompt", ""),
        ({"prompt": "x", "colour": "red"}, "colour", "red"),
        ({"steps": 2}, "prompt", None),
        ({"prompt": "x", "webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url", None),
        ({"prompt": "x", "webhook_url": "ftp://example.com/"}, "webhook_url", None),
    ],
)
def test_bad_input_names_field_value_and_allowed(
    api: ApiProcess, key: str, body: dict[str, Any], param: str, value: Any
) -> None:
    with client(api, key) as c:
        answer = c.post("/v1/jobs", json=body)
    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert error["param"] == param and param in error["message"]
    if value is not None:
        assert error["value"] == value
    if param not in ("colour",):
        assert error["allowed"], error
    assert "allowed" in error["message"] or param == "colour"


def test_oversized_and_malformed_bodies(api: ApiProcess, key: str) -> None:
    with client(api, key) as c:
        huge = c.post("/v1/jobs", json={"prompt": "x" * 70_000})
        assert huge.status_code == 413 and error_of(huge)["param"] == "body"
        broken = c.post(
            "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400 and error_of(broken)["message"]
        listing = c.post("/v1/jobs", json=[1, 2])
        assert listing.status_code == 400
        assert c.get("/v1/jobs/bad%20id").status_code == 400
        assert c.get("/v1/batches/x?limit=0").status_code == 400


def test_batches_json_and_file(api: ApiProcess, key: str, tmp_path: Path) -> None:
    with client(api, key) as c:
        answer = c.post(
            "/v1/batches", json={"jobs": [{"prompt": "a"}, {"prompt": "b", "steps": 2}]}
        )
        assert answer.status_code == 202, answer.text
        batch = c.get(f"/v1/batches/{answer.json()['id']}").json()
        assert batch["total"] == 2 and batch["sealed"] and batch["counts"]["queued"] == 2
        assert len(batch["job_ids"]) == 2
        page = c.get(f"/v1/batches/{batch['id']}", params={"offset": 1, "limit": 1}).json()
        assert page["job_ids"] == batch["job_ids"][1:]
        job = c.get(f"/v1/jobs/{batch['job_ids'][0]}").json()
        assert job["batch_id"] == batch["id"] and job["job_class"] == "bulk"

        rows = "\n".join(json.dumps({"prompt": f"row {i}"}) for i in range(3))
        upload = c.post("/v1/batches", files={"file": ("jobs.jsonl", rows.encode())})
        assert upload.status_code == 202, upload.text
        assert upload.json()["jobs"] == 3
        csv = b"prompt,steps\nfine,2\nbad,12\n"
        refused = c.post("/v1/batches", files={"file": ("jobs.csv", csv)})
        assert refused.status_code == 400, refused.text
        error = error_of(refused)
        assert error["param"] == "file" and "line 3" in error["message"]
        assert "'steps'" in error["message"] and "12" in error["message"]
        assert "jobs.csv" in error["message"] and "/tmp" not in error["message"]
        bad_json = c.post(
            "/v1/batches", json={"jobs": [{"prompt": "a"}, {"prompt": "b", "seed": -1}]}
        )
        assert bad_json.status_code == 400 and error_of(bad_json)["param"] == "jobs[1].seed"

        cancel = c.delete(f"/v1/batches/{batch['id']}")
        assert cancel.status_code == 200 and cancel.json()["canceled"] == 2
        assert c.get(f"/v1/batches/{batch['id']}").json()["counts"]["canceled"] == 2
        other = api.create_key("carol")
    with client(api, other) as c:
        assert c.get(f"/v1/batches/{batch['id']}").status_code == 404
        assert c.delete(f"/v1/batches/{batch['id']}").status_code == 404


def test_events_end_when_the_job_does(api: ApiProcess, key: str) -> None:
    with client(api, key) as c:
        job_id = c.post("/v1/jobs", json={"prompt": "x"}).json()["id"]
        events: list[tuple[str, dict[str, Any]]] = []
        with c.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    events.append((event, json.loads(line.split(":", 1)[1])))
                    if len(events) == 1:
                        assert c.delete(f"/v1/jobs/{job_id}").status_code == 200
        assert [e for e, _ in events] == ["state", "state"]
        assert [d["state"] for _, d in events] == ["queued", "canceled"]


def test_health_ready_metrics_openapi(api: ApiProcess, key: str) -> None:
    with client(api, None) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        # Redis and S3 answer; no worker beats on this test's Redis database.
        body = ready.json()
        assert body["checks"]["redis"] and body["checks"]["s3"] and body["checks"]["queue_depth"]
        assert ready.status_code == (200 if body["checks"]["worker"] else 503)
        metrics = c.get("/metrics").text
        assert 'lcm_api_requests_total{method="GET",route="/v1/jobs/{job_id}"' in metrics
        assert "lcm_api_jobs_submitted_total" in metrics and "lcm_api_rate_limited_total" in metrics
        assert "lcm_api_request_duration_seconds_bucket" in metrics
        spec = c.get("/openapi.json").json()
        paths = set(spec["paths"])
        assert {
            "/v1/jobs",
            "/v1/jobs/{job_id}",
            "/v1/jobs/{job_id}/events",
            "/v1/jobs/{job_id}/images/{index}",
            "/v1/batches",
            "/v1/batches/{batch_id}",
            "/v1/images/generations",
            "/healthz",
            "/readyz",
            "/metrics",
        } <= paths
    assert key not in api.log_text() and "Bearer" not in api.log_text()


def test_a_finished_job_shows_presigned_urls_and_streams_its_png(
    api: ApiProcess, key: str, service_env: dict[str, str]
) -> None:
    # The worker's two writes, done here: its record moves to succeeded with a result, and
    # the PNG is in S3 (the records' and the object store's own code, as a worker uses them).
    import redis

    from lcm_fleet.contract import ImageRecord, Job, JobResult
    from lcm_fleet.keys import image_key
    from lcm_fleet.records import RecordStore
    from lcm_fleet.settings import ConnectionSettings
    from lcm_fleet.storage import ObjectStore

    png = b"\x89PNG\r\n\x1a\n" + uuid.uuid4().bytes * 100
    with client(api, key) as c:
        job_id = c.post("/v1/jobs", json={"prompt": "done soon", "seed": 3}).json()["id"]
        settings = ConnectionSettings(
            **{
                k.removeprefix("LCM_").lower(): v
                for k, v in service_env.items()
                if k.startswith("LCM_")
            }
        )
        store = ObjectStore.from_settings(settings)
        store.put(image_key("", job_id, 0), png, content_type="image/png")
        records = RecordStore(redis.Redis.from_url(service_env["LCM_REDIS_URL"]), 600)
        job = Job(prompt="done soon", seed=3, job_id=job_id)
        records.start(job, "test-worker")
        records.succeed(
            job_id,
            JobResult(
                job_id=job_id,
                prompt=job.prompt,
                steps=4,
                guidance_scale=8.0,
                width=64,
                height=64,
                images=[
                    ImageRecord(
                        index=0,
                        seed=3,
                        key=image_key("", job_id, 0),
                        uri="s3://x",
                        sha256=hashlib.sha256(png).hexdigest(),
                        bytes=len(png),
                    )
                ],
                model_manifest_sha256="m",
                durations_s={"total": 0.1},
                worker="test-worker",
            ),
        )
        view = c.get(f"/v1/jobs/{job_id}").json()
        assert view["state"] == "succeeded" and view["finished_at"] >= view["started_at"]
        image = view["result"]["images"][0]
        assert "X-Amz-Signature" in image["url"] and "X-Amz-Expires=3600" in image["url"]
        assert httpx.get(image["url"], timeout=30).content == png
        streamed = c.get(image["image_url"])
        assert streamed.status_code == 200 and streamed.content == png
        assert streamed.headers["content-type"] == "image/png"
        missing = c.get(f"/v1/jobs/{job_id}/images/1")
        assert missing.status_code == 404 and error_of(missing)["allowed"] == "0 to 0"
        queued = c.post("/v1/jobs", json={"prompt": "x"}).json()["id"]
        assert c.get(f"/v1/jobs/{queued}/images/0").status_code == 409
        # A finished job cannot be cancelled: 409 naming its state, nothing changed.
        refused = c.delete(f"/v1/jobs/{job_id}")
        assert refused.status_code == 409 and "succeeded" in error_of(refused)["message"]
        assert c.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"


def test_redis_down_is_503_not_500(service_env: dict[str, str], tmp_path: Path) -> None:
    from tests.integration.conftest import free_port

    env = api_env(
        service_env, "lcm.test.api.down", LCM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
    )
    down = start_api(env, tmp_path / "api.log")
    try:
        with client(down, "lcm_0123456789abcdef_" + "x" * 43) as c:
            answer = c.get("/v1/jobs/x")
            assert answer.status_code == 503 and error_of(answer)["code"] == "redis_unavailable"
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["redis"] is False
            assert c.get("/healthz").status_code == 200
    finally:
        stop_api(down)
