"""The boto3 S3 client both roles use (any S3: AWS, MinIO, SeaweedFS, by settings)."""

from __future__ import annotations

from typing import Any

from lcm_fleet.settings import ConnectionSettings


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


# Which S3 errors are worth retrying: shared by the worker's uploads and the model registry.
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestTimeTooSkewed",
        "BadDigest",
        "500",
        "502",
        "503",
        "504",
    }
)
#: Words in a boto3 transfer error that mark it as permanent (its cause is a ClientError).
PERMANENT_MARKERS = (
    "AccessDenied",
    "NoSuchBucket",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidBucketName",
)


def error_code(error: BaseException) -> tuple[str, int]:
    """(S3 error code, HTTP status) of a botocore ClientError; ("", 0) for anything else."""
    response = getattr(error, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_transient(error: BaseException) -> bool:
    """True for connection faults, timeouts, 5xx and throttling; False for 4xx and the rest."""
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(error, ClientError):
        code, status = error_code(error)
        return code in TRANSIENT_CODES or status >= 500
    if isinstance(error, (S3UploadFailedError, S3TransferFailedError)):
        return not any(marker in str(error) for marker in PERMANENT_MARKERS)
    return isinstance(error, (BotoCoreError, ConnectionError, TimeoutError, OSError))
