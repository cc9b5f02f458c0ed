"""The gallery in headless Chromium (Debian's chromium, driven by Playwright) against the live
lcm-api on real Redis and S3: the page loads, every thumbnail decodes, it updates while the
batch runs, and a bad or expired signature is 403.

No render worker: the test writes real PNG objects to S3 and moves the records itself
(succeeded with a JobResult), as the worker does. With ``LCM_GALLERY_SCREENSHOT=path`` it
also saves a screenshot of the batch's page (the README's docs/images/gallery.png).
"""

from __future__ import annotations

import io
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lcm_fleet.contract import Job
from lcm_fleet.records import RecordStore
from producer.http.signatures import gallery_sig
from tests.integration.conftest import API_PEPPER, ApiProcess, api_env, start_api, stop_api
from tests.results import make_stored_result

CHROMIUM = os.environ.get("LCM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PROMPTS = [
    ("a red circle on a blue background", (200, 40, 40), (30, 60, 160)),
    ("a yellow sun over green hills", (250, 210, 40), (40, 140, 60)),
    ("a white moon in a purple sky", (240, 240, 240), (80, 30, 120)),
    ("an orange fox in the snow", (230, 120, 30), (220, 225, 235)),
    ("a teal wave under a grey sky", (30, 160, 150), (120, 120, 130)),
    ("a pink flower on black", (240, 120, 180), (15, 15, 20)),
]


def png(prompt_index: int, image: int, size: int = 256) -> bytes:
    """A real PNG: a vertical gradient and a disc in the prompt's colours."""
    from PIL import Image, ImageDraw

    _, fg, bg = PROMPTS[prompt_index % len(PROMPTS)]
    im = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(im)
    for y in range(size):
        shade = tuple(int(c * (0.55 + 0.45 * y / size)) for c in bg)
        draw.line([(0, y), (size, y)], fill=shade)  # type: ignore[arg-type]
    r = size // 4 + 8 * image
    cx, cy = size // 2 + 20 * (image - 1), size // 2 - 10 * image
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def api(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    tmp = tmp_path_factory.mktemp("gallery-api")
    env = api_env(service_env, f"lcm.test.gallery.{uuid.uuid4().hex[:8]}")
    proc = start_api(env, tmp / "api.log")
    yield proc
    stop_api(proc)


@pytest.fixture(scope="module")
def key(api: ApiProcess) -> str:
    return api.create_key("gallery")


@pytest.fixture(scope="module")
def records(service_env: dict[str, str]) -> RecordStore:
    import redis

    return RecordStore(redis.Redis.from_url(service_env["LCM_REDIS_URL"]), 3600)


def finish(records: RecordStore, s3: Any, bucket: str, job: Job, prompt_index: int) -> None:
    """What the worker does for a job: store its PNGs, then record the result."""

    def put(key: str, data: bytes) -> str:
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/png")
        return f"s3://{bucket}/{key}"

    result = make_stored_result(
        job,
        put,
        data=lambda i: png(prompt_index, i),
        width=512,
        height=512,
        model_manifest_sha256="0" * 64,
        durations_s={"text_encoder": 0.05, "unet": 1.6, "vae": 0.4, "total": 2.1 * job.num_images},
        worker="test-worker",
    )
    assert records.succeed(job.job_id, result).done


@pytest.fixture(scope="module")
def batch(records: RecordStore, key: str, s3: Any, service_env: dict[str, str]) -> dict[str, Any]:
    """A batch of six jobs: four succeeded (1-2 images each), one running, one queued."""
    owner, bucket = key.split("_")[1], service_env["LCM_S3_BUCKET"]
    batch_id = f"gal-{uuid.uuid4().hex[:10]}"
    records.create_batch(batch_id, owner, source="prompts.jsonl")
    jobs = [
        Job(
            job_id=f"{batch_id}-{i}",
            prompt=prompt,
            seed=1000 + 17 * i,
            steps=4,
            width=512,
            height=512,
            num_images=2 if i % 2 else 1,
        )
        for i, (prompt, _, _) in enumerate(PROMPTS)
    ]
    for job in jobs:
        records.create_job(job, owner, batch_id=batch_id)
    records.seal_batch(batch_id)
    for i, job in enumerate(jobs[:5]):
        records.start(job, "test-worker")
        if i < 4:
            finish(records, s3, bucket, job, i)
    records.progress(jobs[4].job_id, 1, 1, 2, 4)
    return {"id": batch_id, "jobs": jobs, "bucket": bucket, "owner": owner}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (deploy/local/setup.sh installs Debian's)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def link(api: ApiProcess, key: str, kind: str, record_id: str) -> str:
    answer = httpx.post(
        f"{api.url}/v1/{kind}/{record_id}/gallery-link",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["expires_at"] > time.time() + 60 and key not in body["url"]
    return str(body["url"])


def wait_until(page: Any, expression: str, timeout_s: float = 15) -> None:
    """Poll ``expression`` with page.evaluate (wait_for_function would eval a string, which
    the page's Content-Security-Policy refuses, as it should)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"{expression} still false after {timeout_s} s"
        time.sleep(0.1)


def decoded(page: Any) -> list[int]:
    """naturalWidth of every <img> once each has loaded (0: it did not decode)."""
    wait_until(page, "() => Array.from(document.images).every(i => i.complete)")
    return list(page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)"))


def test_batch_gallery_loads_every_thumbnail_decodes_and_it_updates_live(
    api: ApiProcess, key: str, batch: dict[str, Any], records: RecordStore, s3: Any, browser: Any
) -> None:
    url = link(api, key, "batches", batch["id"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    answer = page.goto(url)
    assert answer.status == 200
    assert answer.headers["referrer-policy"] == "no-referrer"
    page.wait_for_selector("body[data-loaded='1']", timeout=15_000)
    widths = decoded(page)
    assert widths == [256] * 6, widths  # jobs 0-3: 1 + 2 + 1 + 2 images
    text = page.inner_text("main")
    assert "a red circle on a blue background" in text and "seed 1000" in text
    assert "512x512" in text and "total 2.10 s" in text
    assert "image 1 of 1, step 2 of 4" in text  # the running job's progress
    assert "4 of 6 done" in page.inner_text("header")

    if os.environ.get("LCM_GALLERY_SCREENSHOT"):
        page.screenshot(path=os.environ["LCM_GALLERY_SCREENSHOT"], full_page=True)

    # The running job finishes: the page shows its images within a few polls.
    running = batch["jobs"][4]
    finish(records, s3, batch["bucket"], running, 4)
    wait_until(page, "() => document.images.length === 7", timeout_s=10)
    assert decoded(page) == [256] * 7
    wait_until(page, "() => document.querySelectorAll('figure').length === 8")  # + queued
    assert "step 2 of 4" not in page.inner_text("main")  # the placeholder went
    assert page.evaluate("document.body.dataset.finished") == "false"  # one job still queued
    assert not errors, errors
    page.close()


def test_job_gallery_and_other_keys(
    api: ApiProcess, key: str, batch: dict[str, Any], browser: Any
) -> None:
    job = batch["jobs"][1]
    page = browser.new_page()
    assert page.goto(link(api, key, "jobs", job.job_id)).status == 200
    page.wait_for_selector("body[data-finished='true']", timeout=15_000)
    assert decoded(page) == [256, 256]
    page.close()
    other = api.create_key("someone-else")
    for kind, record_id in (("jobs", job.job_id), ("batches", batch["id"])):
        answer = httpx.post(
            f"{api.url}/v1/{kind}/{record_id}/gallery-link",
            headers={"Authorization": f"Bearer {other}"},
        )
        assert answer.status_code == 404, answer.text
    assert httpx.post(f"{api.url}/v1/jobs/{job.job_id}/gallery-link").status_code == 401


def test_bad_or_expired_signatures_are_403(
    api: ApiProcess, key: str, batch: dict[str, Any], browser: Any
) -> None:
    batch_id, job = batch["id"], batch["jobs"][0]
    good = link(api, key, "batches", batch_id)
    exp = int(good.split("exp=")[1].split("&")[0])
    sig = good.split("sig=")[1]
    past = int(time.time()) - 10
    expired = gallery_sig(API_PEPPER, "batch", batch_id, past)  # right signature, past expiry
    base = f"{api.url}/gallery/batches/{batch_id}"
    bad_queries = [
        f"exp={exp}&sig={'0' * 64}",
        f"exp={exp + 1}&sig={sig}",
        f"exp={past}&sig={expired}",
        f"exp={exp}&sig={gallery_sig(API_PEPPER, 'job', batch_id, exp)}",  # another kind
        f"exp={exp}&sig={gallery_sig('another-pepper', 'batch', batch_id, exp)}",
    ]
    for query in bad_queries:
        for path in ("", "/data", f"/images/{job.job_id}/0"):
            answer = httpx.get(f"{base}{path}?{query}")
            assert answer.status_code == 403, (path, query, answer.text)
            assert answer.json()["error"]["code"] == "invalid_gallery_link"
    # The batch's link opens none of another record's pages.
    assert httpx.get(f"{api.url}/gallery/jobs/{job.job_id}?exp={exp}&sig={sig}").status_code == 403
    # An image of a job outside the batch is 404 even with the batch's good signature.
    assert httpx.get(f"{base}/images/not-in-batch/0?exp={exp}&sig={sig}").status_code == 404
    assert httpx.get(f"{base}/images/{job.job_id}/0?exp={exp}&sig={sig}").status_code == 200
    # In the browser: the page answers 403 with the error body.
    page = browser.new_page()
    assert page.goto(f"{base}?exp={past}&sig={expired}").status == 403
    page.close()
