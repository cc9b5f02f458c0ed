"""The gallery: an HTML page of a job's or a batch's images, reached by a short-lived link.

A key asks for a link (``POST /v1/jobs/{id}/gallery-link``, ``POST /v1/batches/{id}/
gallery-link``); the link carries ``exp`` and ``sig`` = HMAC-SHA256(pepper,
``gallery:{kind}:{id}:{exp}``) instead of the key, so it can be opened in a browser, and
logged, without giving the key away. The page is static HTML with a small inline script
that reads ``/gallery/.../data`` about once a second (while anything is unfinished) and
shows each image through ``/gallery/.../images/...``; both carry the same ``exp`` and
``sig``. A bad or expired signature is 403. No external script, style or font.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel

from lcm_fleet.contract import JOB_ID_PATTERN, JobState
from lcm_fleet.records import BatchCounts, JobRecord
from lcm_fleet.storage import is_not_found
from producer.http.deps import KeyDep, ServicesDep, scope_of
from producer.http.errors import ApiError, responses
from producer.http.services import Services
from producer.http.signatures import gallery_link_valid, gallery_sig

router = APIRouter(tags=["gallery"])

Kind = Literal["job", "batch"]
RecordId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The job's or batch's id")]
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The job's id")]
#: Jobs per page of a batch's gallery.
PAGE_DEFAULT, PAGE_MAX = 24, 100
SECURITY_HEADERS = {
    # The link's signature must not leave in a Referer; the page loads only its own origin.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


class GalleryLink(BaseModel):
    #: The gallery page, signed; open it in a browser (no key needed) until ``expires_at``.
    url: str
    #: Unix seconds.
    expires_at: int


class GalleryItem(BaseModel):
    """One image (or, for a job without images yet, the job's place in the grid)."""

    job_id: str
    #: The image's index in its job; None for a job without images yet.
    index: int | None
    state: JobState
    prompt: str | None
    seed: int | None
    width: int | None
    height: int | None
    steps: int | None
    #: Seconds per stage of the job (text_encoder, unet, vae, upload, render, total).
    durations_s: dict[str, float]
    #: "image i of n, step s of S" while it runs.
    progress: str | None
    reason: str | None
    #: The PNG through the gallery (same signature), once stored.
    image: str | None


class GalleryPage(BaseModel):
    kind: Kind
    id: str
    #: Jobs in the batch (1 for a job).
    total: int
    counts: BatchCounts
    #: Nothing on this gallery will change any more (every job finished).
    finished: bool
    offset: int
    limit: int
    items: list[GalleryItem]
    #: Unix seconds of this answer.
    at: float


def _forbidden() -> ApiError:
    return ApiError(
        403,
        "the gallery link is not valid or has expired; ask the API for a new one "
        "(POST /v1/jobs/{id}/gallery-link or /v1/batches/{id}/gallery-link)",
        param="sig",
        allowed="the exp and sig of a gallery link that has not expired",
        code="invalid_gallery_link",
    )


class Token:
    """The link's ``exp`` and ``sig`` query parameters, checked for the record in the path."""

    def __init__(
        self,
        exp: Annotated[int, Query(ge=0, le=2**40, description="Expiry, Unix seconds")],
        sig: Annotated[str, Query(max_length=64, description="The link's signature (hex)")],
    ) -> None:
        self.exp, self.sig = exp, sig

    @property
    def query(self) -> str:
        return f"exp={self.exp}&sig={self.sig}"

    def check(self, services: Services, kind: Kind, record_id: str) -> None:
        pepper = services.settings.api_key_pepper.get_secret_value()
        if not gallery_link_valid(pepper, kind, record_id, self.exp, self.sig):
            raise _forbidden()


TokenDep = Annotated[Token, Depends()]


def _link(request: Request, services: Services, kind: Kind, record_id: str) -> GalleryLink:
    exp = int(time.time()) + services.settings.gallery_link_expires_s
    pepper = services.settings.api_key_pepper.get_secret_value()
    sig = gallery_sig(pepper, kind, record_id, exp)
    name = "gallery_job_page" if kind == "job" else "gallery_batch_page"
    params = {"job_id": record_id} if kind == "job" else {"batch_id": record_id}
    page = request.url_for(name, **params)
    return GalleryLink(url=f"{page}?exp={exp}&sig={sig}", expires_at=exp)


def _not_found(kind: Kind, record_id: str) -> ApiError:
    field = f"{kind}_id"
    return ApiError(
        404,
        f"no {kind} {record_id!r} for this key (unknown, expired, or another key's)",
        param=field,
        value=record_id,
        allowed=f"the id of a {kind} this key submitted",
        code=f"{kind}_not_found",
    )


@router.post(
    "/v1/jobs/{job_id}/gallery-link",
    response_model=GalleryLink,
    responses=responses(400, 401, 404, 429),
    summary="A signed, short-lived link to a job's gallery page",
)
def job_gallery_link(
    job_id: JobId, request: Request, services: ServicesDep, key: KeyDep
) -> GalleryLink:
    if services.records.get_job(job_id, scope_of(key)) is None:
        raise _not_found("job", job_id)
    return _link(request, services, "job", job_id)


@router.post(
    "/v1/batches/{batch_id}/gallery-link",
    response_model=GalleryLink,
    responses=responses(400, 401, 404, 429),
    summary="A signed, short-lived link to a batch's gallery page",
)
def batch_gallery_link(
    batch_id: RecordId, request: Request, services: ServicesDep, key: KeyDep
) -> GalleryLink:
    if services.records.get_batch(batch_id, scope_of(key)) is None:
        raise _not_found("batch", batch_id)
    return _link(request, services, "batch", batch_id)


# ---------------------------------------------------------------- the page


def _page(kind: Kind, record_id: str, data_path: str, image_prefix: str) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    config = json.dumps({"kind": kind, "id": record_id, "data": data_path, "img": image_prefix})
    html = (
        _HTML.replace("__NONCE__", nonce)
        .replace("__TITLE__", f"{kind} {record_id}")
        .replace("__CONFIG__", config.replace("<", "\\u003c"))
    )
    csp = (
        "default-src 'none'; img-src 'self' data:; connect-src 'self'; "
        f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )
    return HTMLResponse(html, headers={**SECURITY_HEADERS, "Content-Security-Policy": csp})


# No response_class=HTMLResponse: FastAPI would then document the JSON error bodies as
# text/html; the 200 is documented as HTML here.
_PAGE_RESPONSES = {
    **responses(400, 403),
    200: {"content": {"text/html": {}}, "description": "The gallery page"},
}


@router.get(
    "/gallery/jobs/{job_id}",
    responses=_PAGE_RESPONSES,
    summary="A job's gallery page (signed link)",
)
def gallery_job_page(job_id: JobId, token: TokenDep, services: ServicesDep) -> HTMLResponse:
    token.check(services, "job", job_id)
    base = f"/gallery/jobs/{job_id}"
    return _page("job", job_id, f"{base}/data", f"{base}/images/")


@router.get(
    "/gallery/batches/{batch_id}",
    responses=_PAGE_RESPONSES,
    summary="A batch's gallery page (signed link)",
)
def gallery_batch_page(batch_id: RecordId, token: TokenDep, services: ServicesDep) -> HTMLResponse:
    token.check(services, "batch", batch_id)
    base = f"/gallery/batches/{batch_id}"
    return _page("batch", batch_id, f"{base}/data", f"{base}/images/")


# ---------------------------------------------------------------- its data


def _progress(record: JobRecord) -> str | None:
    p = record.progress
    if record.state is not JobState.RUNNING or p is None:
        return None
    return f"image {p.image} of {p.images}, step {p.step} of {p.steps}"


def _items(record: JobRecord, image_path: str, query: str) -> list[GalleryItem]:
    job = record.job
    common: dict[str, Any] = {
        "job_id": record.job_id,
        "state": record.state,
        "progress": _progress(record),
        "reason": record.reason,
    }
    if record.result is not None:
        r = record.result
        return [
            GalleryItem(
                **common,
                index=image.index,
                prompt=r.prompt,
                seed=image.seed,
                width=r.width,
                height=r.height,
                steps=r.steps,
                durations_s=r.durations_s,
                image=f"{image_path}{image.index}?{query}",
            )
            for image in r.images
        ]
    return [
        GalleryItem(
            **common,
            index=None,
            prompt=job.prompt if job else None,
            seed=job.seed if job else None,
            width=job.width if job else None,
            height=job.height if job else None,
            steps=job.steps if job else None,
            durations_s={},
            image=None,
        )
    ]


@router.get(
    "/gallery/jobs/{job_id}/data",
    response_model=GalleryPage,
    responses=responses(400, 403, 404),
    summary="A job's gallery data (signed link)",
)
def gallery_job_data(job_id: JobId, token: TokenDep, services: ServicesDep) -> GalleryPage:
    token.check(services, "job", job_id)
    record = services.records.get_job(job_id)
    if record is None:
        raise _not_found("job", job_id)
    counts = BatchCounts(**{record.state.value: 1})
    return GalleryPage(
        kind="job",
        id=job_id,
        total=1,
        counts=counts,
        finished=record.finished,
        offset=0,
        limit=1,
        items=_items(record, f"/gallery/jobs/{job_id}/images/", token.query),
        at=time.time(),
    )


@router.get(
    "/gallery/batches/{batch_id}/data",
    response_model=GalleryPage,
    responses=responses(400, 403, 404),
    summary="A page of a batch's gallery data (signed link)",
)
def gallery_batch_data(
    batch_id: RecordId,
    token: TokenDep,
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0, le=10**6, description="First job of the page")] = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="Jobs per page")] = PAGE_DEFAULT,
) -> GalleryPage:
    token.check(services, "batch", batch_id)
    records = services.records
    batch = records.get_batch(batch_id)
    if batch is None:
        raise _not_found("batch", batch_id)
    items: list[GalleryItem] = []
    for job_id in records.batch_job_ids(batch_id, offset, limit):
        record = records.get_job(job_id)
        if record is not None:
            path = f"/gallery/batches/{batch_id}/images/{job_id}/"
            items += _items(record, path, token.query)
    return GalleryPage(
        kind="batch",
        id=batch_id,
        total=batch.total,
        counts=batch.counts,
        finished=batch.finished,
        offset=offset,
        limit=limit,
        items=items,
        at=time.time(),
    )


# ---------------------------------------------------------------- its images

_IMAGE_RESPONSES = {
    **responses(400, 403, 404, 503),
    200: {"content": {"image/png": {}}, "description": "The PNG, streamed from S3"},
}
Index = Annotated[int, Path(ge=0, le=1000, description="The image's index, from 0")]


def _image(services: Services, record: JobRecord | None, index: int) -> StreamingResponse:
    keys = [i.key for i in record.result.images] if record and record.result else []
    if record is None or index >= len(keys):
        raise ApiError(404, "no such image in this gallery", param="index", value=index)
    try:
        obj = services.store.client.get_object(Bucket=services.store.bucket, Key=keys[index])
    except Exception as e:
        if is_not_found(e):
            raise ApiError(404, "the image is no longer stored", param="index", value=index) from e
        raise ApiError(
            503, "the object store did not answer; retry later", headers={"Retry-After": "5"}
        ) from e
    body = obj["Body"]

    def chunks() -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(64 * 1024)
        finally:
            body.close()

    headers = {
        **SECURITY_HEADERS,
        # An image's key holds one job's image; the link's expiry bounds the copy's use.
        "Cache-Control": "private, max-age=600",
    }
    if "ContentLength" in obj:
        headers["Content-Length"] = str(obj["ContentLength"])
    return StreamingResponse(chunks(), media_type="image/png", headers=headers)


@router.get(
    "/gallery/jobs/{job_id}/images/{index}",
    response_class=StreamingResponse,
    responses=_IMAGE_RESPONSES,
    summary="An image of a job's gallery (signed link)",
)
def gallery_job_image(
    job_id: JobId, index: Index, token: TokenDep, services: ServicesDep
) -> StreamingResponse:
    token.check(services, "job", job_id)
    return _image(services, services.records.get_job(job_id), index)


@router.get(
    "/gallery/batches/{batch_id}/images/{job_id}/{index}",
    response_class=StreamingResponse,
    responses=_IMAGE_RESPONSES,
    summary="An image of a batch's gallery (signed link)",
)
def gallery_batch_image(
    batch_id: RecordId, job_id: JobId, index: Index, token: TokenDep, services: ServicesDep
) -> StreamingResponse:
    token.check(services, "batch", batch_id)
    record = services.records.get_job(job_id)
    if record is not None and record.batch_id != batch_id:
        record = None  # the link is for this batch's images only
    return _image(services, record, index)


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>lcm-fleet gallery: __TITLE__</title>
<style nonce="__NONCE__">
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#111;color:#ddd}
header{padding:12px 20px;background:#1b1b1b;border-bottom:1px solid #333;display:flex;
  gap:18px;align-items:center;flex-wrap:wrap}
h1{font-size:16px;margin:0;color:#fff}
#bar{flex:1;min-width:160px;height:8px;background:#333;border-radius:4px;overflow:hidden}
#bar div{height:100%;background:#4caf50;width:0;transition:width .3s}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:14px;padding:20px}
figure{margin:0;background:#1b1b1b;border:1px solid #333;border-radius:6px;overflow:hidden}
figure img,.ph{display:block;width:100%;aspect-ratio:1;object-fit:cover;background:#222}
.ph{display:flex;align-items:center;justify-content:center;color:#888;text-align:center}
figcaption{padding:8px 10px;font-size:12px}
.prompt{color:#fff;font-size:13px;margin-bottom:4px;overflow-wrap:anywhere}
.meta{color:#999}.failed,.canceled{color:#e57373}
nav button{background:#333;color:#ddd;border:1px solid #555;border-radius:4px;padding:4px 10px}
nav button:disabled{opacity:.4}
#msg{color:#e57373}
</style></head>
<body>
<header><h1 id="title"></h1><span id="counts"></span><div id="bar"><div></div></div>
<nav><button id="prev">&larr;</button> <span id="page"></span> <button id="next">&rarr;</button>
</nav><span id="msg"></span></header>
<main id="grid"></main>
<script nonce="__NONCE__">
"use strict";
const CFG = __CONFIG__;
const q = new URLSearchParams(location.search);
const token = "exp=" + encodeURIComponent(q.get("exp") || "") +
  "&sig=" + encodeURIComponent(q.get("sig") || "");
const LIMIT = 24;
let offset = Math.max(0, parseInt(q.get("offset") || "0", 10) || 0);
let timer = null, cards = new Map();
const $ = (id) => document.getElementById(id);
$("title").textContent = CFG.kind + " " + CFG.id;
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function times(d) {
  const keys = ["total", "render", "unet", "vae", "upload"].filter((k) => k in d);
  return keys.map((k) => k + " " + d[k].toFixed(2) + " s").join(", ");
}
function card(item) {
  const key = item.job_id + "/" + (item.index === null ? "-" : item.index);
  let c = cards.get(key);
  if (!c) {
    c = {fig: el("figure"), media: null, cap: el("figcaption")};
    c.fig.dataset.key = key;
    c.fig.append(el("div", "ph", "..."), c.cap);
    c.media = c.fig.firstChild;
    cards.set(key, c);
  }
  if (item.image && c.media.tagName !== "IMG") {
    const img = el("img");
    img.alt = item.prompt || "";
    img.src = item.image;
    c.media.replaceWith(img);
    c.media = img;
  } else if (!item.image) {
    c.media.textContent = item.progress || item.state + (item.reason ? ": " + item.reason : "");
    c.media.className = "ph " + item.state;
  }
  const size = item.width ? item.width + "x" + item.height : "model size";
  const lines = [
    el("div", "prompt", item.prompt || ""),
    el("div", "meta", "seed " + item.seed + " \\u00b7 " + size + " \\u00b7 " + item.steps +
      " steps" + (item.index !== null ? " \\u00b7 image " + item.index : "")),
    el("div", "meta " + item.state, item.state + (times(item.durations_s) ?
      " \\u00b7 " + times(item.durations_s) : "")),
  ];
  c.cap.replaceChildren(...lines);
  return key;
}
async function refresh() {
  clearTimeout(timer);
  let answer;
  try {
    answer = await fetch(CFG.data + "?" + token + "&offset=" + offset + "&limit=" + LIMIT,
      {cache: "no-store"});
  } catch (e) {
    $("msg").textContent = "offline; retrying";
    timer = setTimeout(refresh, 2000);
    return;
  }
  if (answer.status === 403) {
    $("msg").textContent = "this link has expired; ask the API for a new one";
    return;
  }
  if (!answer.ok) {
    $("msg").textContent = "error " + answer.status + "; retrying";
    timer = setTimeout(refresh, 2000);
    return;
  }
  $("msg").textContent = "";
  const d = await answer.json();
  const c = d.counts, done = c.succeeded + c.failed + c.canceled;
  $("counts").textContent = done + " of " + d.total + " done (" + c.succeeded + " succeeded, " +
    c.failed + " failed, " + c.canceled + " canceled, " + c.running + " running, " +
    c.queued + " queued)";
  $("bar").firstChild.style.width = (d.total ? 100 * done / d.total : 0) + "%";
  const pages = Math.max(1, Math.ceil(d.total / LIMIT));
  $("page").textContent = "page " + (Math.floor(offset / LIMIT) + 1) + " of " + pages;
  $("prev").disabled = offset === 0;
  $("next").disabled = offset + LIMIT >= d.total;
  // Cards keep their <img> across polls (no reload); order follows the data, and a job's
  // placeholder goes once its images are there.
  const keys = new Set(d.items.map(card));
  for (const [k, c] of cards) if (!keys.has(k)) { c.fig.remove(); cards.delete(k); }
  $("grid").append(...[...keys].map((k) => cards.get(k).fig));
  document.body.dataset.items = String(cards.size);
  document.body.dataset.finished = String(d.finished);
  document.body.dataset.loaded = "1";
  if (!d.finished) timer = setTimeout(refresh, 1000);
}
function go(delta) {
  offset = Math.max(0, offset + delta);
  cards = new Map();
  $("grid").replaceChildren();
  refresh();
}
$("prev").onclick = () => go(-LIMIT);
$("next").onclick = () => go(LIMIT);
refresh();
</script>
</body></html>
"""
