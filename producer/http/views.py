"""Records as the API shows them (presigned URLs instead of object keys)."""

from __future__ import annotations

from fastapi import Request

from lcm_fleet.records import BatchRecord, JobRecord
from producer.http.schemas import BatchView, ImageView, JobView, ResultView
from producer.http.services import Services


def job_view(services: Services, request: Request, record: JobRecord) -> JobView:
    result = None
    if record.result is not None:
        r = record.result
        images = [
            ImageView(
                index=image.index,
                seed=image.seed,
                sha256=image.sha256,
                bytes=image.bytes,
                url=services.presign(image.key),
                image_url=str(
                    request.url_for("get_job_image", job_id=record.job_id, index=image.index)
                ),
            )
            for image in r.images
        ]
        result = ResultView(
            prompt=r.prompt,
            steps=r.steps,
            guidance_scale=r.guidance_scale,
            width=r.width,
            height=r.height,
            images=images,
            durations_s=r.durations_s,
            model_manifest_sha256=r.model_manifest_sha256,
            worker=r.worker,
        )
    return JobView(
        id=record.job_id,
        state=record.state,
        batch_id=record.batch_id,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        updated_at=record.updated_at,
        progress=record.progress,
        waiting=record.waiting,
        cancel_requested=record.cancel_requested,
        reason=record.reason,
        job=record.job,
        result=result,
        partial_images=[services.presign(key) for key in record.partial_keys],
        webhook_url=record.webhook_url,
        job_class=record.job_class,
    )


def batch_view(record: BatchRecord, job_ids: list[str], offset: int, limit: int) -> BatchView:
    return BatchView(
        id=record.batch_id,
        created_at=record.created_at,
        finished_at=record.finished_at,
        total=record.total,
        sealed=record.sealed,
        counts=record.counts,
        progress=record.counts.finished / record.total if record.total else 0.0,
        job_ids=job_ids,
        offset=offset,
        limit=limit,
        webhook_url=record.webhook_url,
        source=record.source,
        output_prefix=record.output_prefix,
        summary=record.summary,
    )
