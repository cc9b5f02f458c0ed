"""Typed settings from environment variables with the prefix ``LCM_``.

``ConnectionSettings`` holds what every role needs to reach Redis and S3; the
producer's, the worker's and the build's settings extend it, so each process has one
object. Secrets are ``SecretStr``: the object store unwraps them once, where it
builds its client (lcm_fleet/storage.py).
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lcm_fleet.contract import QUEUE_RENDER
from lcm_fleet.keys import normalise_prefix

ENV_PREFIX = "LCM_"
#: What a password in a printed URL becomes.
MASK = "***"
#: Query parameters of a URL whose values are never printed.
_SECRET_PARAMS = frozenset({"password", "pass", "passwd", "secret", "token", "key", "api_key"})
TLS_SCHEMES = frozenset({"rediss"})
#: Settings whose values are never quoted in an error (any field whose name has one of these).
_SECRET_WORDS = ("secret", "password", "pepper", "key", "token")
#: The longest value an error quotes.
QUOTE_MAX_CHARS = 80


def quoted_input(field: str, value: object) -> str:
    """`` (got ...)`` for a settings error about ``field``, or "" when it must not be shown.

    Never a secret field's value, never a whole-object input (a model-level check gets every
    setting, secrets included), URLs masked, long values cut.
    """
    if not field or isinstance(value, (dict, list, tuple)) or value is None:
        return ""
    if any(word in field.lower() for word in _SECRET_WORDS):
        return ""
    text = masked_url(value) if isinstance(value, str) and "://" in value else str(value)
    if len(text) > QUOTE_MAX_CHARS:
        text = text[:QUOTE_MAX_CHARS] + "..."
    return f" (got {text!r})"


def settings_problems(error: Any) -> list[str]:
    """A pydantic ValidationError of a settings object as ``LCM_FIELD: message`` lines,
    values quoted only by :func:`quoted_input`'s rules."""
    lines = []
    for err in error.errors():
        field = ".".join(str(p) for p in err["loc"])
        env = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        value = "" if err["type"] == "missing" else quoted_input(field, err.get("input"))
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{env}: {msg}{value}")
    return lines


def masked_url(url: str | None) -> str:
    """``url`` with its password (and any password-like query value) replaced by ``***``.

    The one way lcm-fleet prints a Redis or S3 URL in a message or a log:
    ``redis://:hunter2@host:6379/0`` becomes ``redis://:***@host:6379/0``. A value that
    does not parse as a URL is masked whole after its scheme, never printed as it is.
    """
    if not url:
        return str(url)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, sep, _password = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}" if sep else f"{MASK}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, MASK if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*/"
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        scheme = url.split(":", 1)[0] if "://" in url else ""
        return f"{scheme}://{MASK}" if scheme else MASK


class ConnectionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    #: Celery broker and result backend.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Queue that render jobs go to.
    queue: str = QUEUE_RENDER
    #: Seconds a finished job's result stays readable in Redis.
    result_expires_s: int = Field(default=7 * 24 * 3600, ge=60)
    #: Seconds a job or batch record (lcm_fleet/records.py) stays readable after its last
    #: change.
    record_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    #: Redis of the job and batch records; None: the broker's (LCM_REDIS_URL).
    records_redis_url: str | None = None
    #: TLS to Redis (``rediss://`` URLs; plain ``redis://`` ignores these): the CA bundle
    #: that signed the server's certificate (None: the system's), how strictly the
    #: server's certificate is checked, and a client certificate and key for mutual TLS.
    redis_tls_ca_file: str | None = None
    redis_tls_cert_reqs: Literal["required", "optional", "none"] = "required"
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None

    #: S3 endpoint; None means AWS's own endpoints.
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str = "lcm-fleet"
    #: Key prefix under which all of lcm-fleet's objects live.
    s3_prefix: str = ""
    s3_connect_timeout_s: float = Field(default=5.0, gt=0)
    s3_read_timeout_s: float = Field(default=60.0, gt=0)
    #: S3 credentials; None uses boto3's default chain. The worker requires both.
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None

    @property
    def records_url(self) -> str:
        return self.records_redis_url or self.redis_url

    def redis_ssl_kwargs(self, url: str | None = None) -> dict[str, Any]:
        """redis-py's TLS arguments for ``url`` (default the broker's); {} unless rediss://."""
        if urlsplit(url or self.redis_url).scheme not in TLS_SCHEMES:
            return {}
        kwargs: dict[str, Any] = {"ssl_cert_reqs": self.redis_tls_cert_reqs}
        if self.redis_tls_ca_file:
            kwargs["ssl_ca_certs"] = self.redis_tls_ca_file
        if self.redis_tls_cert_file:
            kwargs["ssl_certfile"] = self.redis_tls_cert_file
        if self.redis_tls_key_file:
            kwargs["ssl_keyfile"] = self.redis_tls_key_file
        return kwargs

    def redis_client(self, url: str | None = None, **kwargs: Any) -> Any:
        """A redis-py client of ``url`` (default the broker's), TLS settings applied."""
        import redis

        target = url or self.redis_url
        return redis.Redis.from_url(target, **self.redis_ssl_kwargs(target), **kwargs)

    def redis_async_client(self, url: str | None = None, **kwargs: Any) -> Any:
        """A redis-py asyncio client of ``url`` (default the broker's), TLS settings applied."""
        import redis.asyncio

        target = url or self.redis_url
        return redis.asyncio.Redis.from_url(target, **self.redis_ssl_kwargs(target), **kwargs)

    def celery_tls_config(self) -> dict[str, Any]:
        """Celery settings for a ``rediss://`` broker and result backend; {} for redis://.

        Celery refuses a rediss:// URL without ``ssl_cert_reqs``; these pass LCM_REDIS_TLS_*
        instead of query-string parameters in the URL.
        """
        import ssl

        if urlsplit(self.redis_url).scheme not in TLS_SCHEMES:
            return {}
        reqs = {
            "required": ssl.CERT_REQUIRED,
            "optional": ssl.CERT_OPTIONAL,
            "none": ssl.CERT_NONE,
        }[self.redis_tls_cert_reqs]
        options: dict[str, Any] = {"ssl_cert_reqs": reqs}
        if self.redis_tls_ca_file:
            options["ssl_ca_certs"] = self.redis_tls_ca_file
        if self.redis_tls_cert_file:
            options["ssl_certfile"] = self.redis_tls_cert_file
        if self.redis_tls_key_file:
            options["ssl_keyfile"] = self.redis_tls_key_file
        return {"broker_use_ssl": options, "redis_backend_use_ssl": dict(options)}

    @field_validator("s3_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return normalise_prefix(value)
