"""The HTTP service's settings: the producer's, and what the API itself needs (prefix ``LCM_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr, computed_field, field_validator

from producer.settings import ProducerSettings


def parse_size(text: str) -> tuple[int, int]:
    """``"512x512"`` -> ``(512, 512)``; ValueError naming what is allowed."""
    width, sep, height = text.strip().lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"{text!r} is not a size; write it as WIDTHxHEIGHT, e.g. 512x512")
    return int(width), int(height)


class ApiSettings(ProducerSettings):
    """One object for ``lcm-api``; every secret without a default."""

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    #: uvicorn processes of ``lcm-api serve`` (one socket; each its own Redis clients and
    #: key cache; /metrics then counts the process that answers it).
    api_workers: int = Field(default=1, ge=1, le=64)
    #: Key of the HMAC-SHA256 that API keys are stored under and webhook secrets derive from.
    #: Required: changing it invalidates every key and every webhook secret.
    api_key_pepper: SecretStr
    #: Lifetime of the presigned GET URLs of images.
    presign_expires_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    #: S3 endpoint clients reach (presigned URLs are signed for it); None: s3_endpoint_url.
    s3_public_endpoint_url: str | None = None
    #: Largest JSON request body; larger ones are answered 413.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    #: Largest multipart upload of a batch file.
    max_upload_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    #: Requests per minute of a key created without its own limit (moving window).
    default_rate_per_minute: int = Field(default=600, ge=1)
    #: How long an API process remembers a verified key (by its digest). A revoked key
    #: submits nothing from the moment it is revoked (the submission script checks it); its
    #: other requests are refused within this many seconds. 0: look every key up each time.
    api_key_cache_s: float = Field(default=2.0, ge=0, le=60)
    #: Queued + running jobs of a key created without its own limit.
    default_max_in_flight: int = Field(default=10_000, ge=1)
    #: Retry-After of a submit refused for too many jobs in flight.
    in_flight_retry_after_s: int = Field(default=5, ge=1)
    #: How long POST /v1/images/generations waits for its job.
    openai_wait_timeout_s: float = Field(default=120.0, gt=0)
    #: Sizes (WxH, comma-separated) that POST /v1/images/generations accepts; "" any size the
    #: job contract allows (a size no worker serves then waits for the timeout).
    served_sizes: str = ""
    #: How long an Idempotency-Key is remembered.
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    #: /readyz fails when more messages than this wait on the render queues.
    ready_max_queue_depth: int = Field(default=100_000, ge=0)
    #: /readyz fails when no worker heartbeat is younger than this.
    ready_heartbeat_max_age_s: float = Field(default=60.0, gt=0)
    #: The workers' LCM_HEARTBEAT_TTL_S (the same variable): a heartbeat key's remaining
    #: lifetime says how long ago its worker beat.
    heartbeat_ttl_s: float = Field(default=30.0, ge=3, le=3600)
    #: Accept webhook URLs to loopback, link-local and private addresses (tests, one host).
    webhook_allow_private_urls: bool = False
    #: Lifetime of a gallery link (POST /v1/jobs|batches/{id}/gallery-link; routes/gallery.py).
    gallery_link_expires_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    #: How often GET /v1/jobs/{id}/events reads the record.
    events_poll_s: float = Field(default=0.15, gt=0, le=5)
    #: An event stream ends after this long even if its job has not.
    events_max_s: float = Field(default=3600.0, gt=0)

    @field_validator("served_sizes")
    @classmethod
    def _sizes(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            parse_size(part)
        return value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def served_size_list(self) -> tuple[tuple[int, int], ...]:
        return tuple(parse_size(p) for p in (p.strip() for p in self.served_sizes.split(",")) if p)
