"""The boto3 S3 client both roles use (any S3: AWS, MinIO, SeaweedFS, by settings)."""

from __future__ import annotations

from typing import Any

from producer.settings import ConnectionSettings


def s3_client(
    settings: ConnectionSettings, access_key_id: str | None, secret_access_key: str | None
) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=settings.s3_region,
        connect_timeout=settings.s3_connect_timeout_s,
        read_timeout=settings.s3_read_timeout_s,
        # Our own capped backoff decides on retries; botocore makes one attempt.
        retries={"max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
        signature_version="s3v4",
    )
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"
