"""The registry's runtime half: model names and references, resolve and pull.

Layout under the store's key prefix (lcm_fleet.keys)::

    models/<name>/<version>/<file>     every file of the artifact; manifest.json goes up last
    models/<name>/<alias>.json         an alias such as latest: :class:`Alias`, written only
                                       after every object of the version is uploaded and
                                       verified

A version is the first 16 hex digits of the sha256 of the artifact's ``manifest.json``; the
manifest lists the size and sha256 of every file, so the version names the content. Every
object carries its sha256 as ``x-amz-meta-sha256``.

:meth:`Registry.pull` downloads a version once into ``CACHE/<name>/<version>/``: into a
temporary folder beside it, every file checked against the downloaded manifest (whose own
sha256 must match the version), then renamed into place; an ``fcntl.flock`` lock file
serialises the processes of one machine. The worker verifies the cached folder again
before it serves. Publishing is model_build's (model_build/registry.py), on this Registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, ValidationError

from lcm_fleet.artifact.manifest import MANIFEST_NAME, Manifest, sha256_bytes, sha256_file
from lcm_fleet.errors import (
    IntegrityError,
    ManifestError,
    RegistryError,
    RegistryInputError,
    TransientStorageError,
    UnknownModelError,
)
from lcm_fleet.keys import (
    DEFAULT_ALIAS,
    alias_key,
    models_root,
    name_prefix,
    object_key,
    version_prefix,
)
from lcm_fleet.settings import ConnectionSettings
from lcm_fleet.storage import ObjectNotFound, ObjectStore

__all__ = [
    "DEFAULT_ALIAS",
    "NAME_PATTERN",
    "NAME_RULE",
    "VERSION_LENGTH",
    "Alias",
    "IntegrityError",
    "Listing",
    "ModelRef",
    "Registry",
    "RegistryError",
    "RegistryInputError",
    "UnknownModelError",
    "cached_path",
    "is_safe_rel",
    "is_version",
    "looks_like_ref",
    "parse_ref",
    "validate_alias",
    "validate_name",
    "version_of",
]

logger = logging.getLogger(__name__)

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
NAME_RULE = "1 to 64 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or a digit"
VERSION_LENGTH = 16
#: ``x-amz-meta-*`` key on a version's manifest.json: when it was published.
META_PUBLISHED_AT = "published-at"

_NAME_RE = re.compile(NAME_PATTERN)
_VERSION_RE = re.compile(rf"[0-9a-f]{{{VERSION_LENGTH}}}")


# --- names and references ----------------------------------------------------------------


def validate_name(value: object, field_name: str = "name") -> str:
    """Return ``value`` if it is a valid model name, else raise RegistryInputError."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise RegistryInputError(
            f"{field_name}={value!r} is not a valid model name: use {NAME_RULE} "
            "(e.g. 'dreamshaper-int8')"
        )
    return value


def is_version(value: str) -> bool:
    return bool(_VERSION_RE.fullmatch(value))


def validate_alias(value: object) -> str:
    """An alias such as ``latest``: a valid name that cannot be mistaken for a version."""
    alias = validate_name(value, "alias")
    if is_version(alias):
        raise RegistryInputError(
            f"alias={alias!r} looks like a version ({VERSION_LENGTH} hex digits): "
            "choose another alias, e.g. 'latest' or 'stable'"
        )
    return alias


def version_of(manifest_sha256: str) -> str:
    """The version of an artifact whose manifest.json has this sha256."""
    return manifest_sha256[:VERSION_LENGTH]


@dataclass(frozen=True)
class ModelRef:
    """``name@tag``: the tag is a version (16 hex digits) or an alias such as ``latest``."""

    name: str
    tag: str

    @property
    def version(self) -> str | None:
        return self.tag if is_version(self.tag) else None

    def __str__(self) -> str:
        return f"{self.name}@{self.tag}"


def parse_ref(ref: str | ModelRef) -> ModelRef:
    """Parse ``NAME@VERSION`` or ``NAME@ALIAS`` (``NAME@latest``)."""
    if isinstance(ref, ModelRef):
        return ref
    how = f"write NAME@latest or NAME@VERSION (VERSION: {VERSION_LENGTH} hex digits)"
    if not isinstance(ref, str) or ref.count("@") != 1:
        raise RegistryInputError(f"model reference {ref!r} is not NAME@TAG: {how}")
    name, tag = ref.split("@")
    validate_name(name, f"model reference {ref!r}: name")
    if not tag:
        raise RegistryInputError(f"model reference {ref!r} has no tag after '@': {how}")
    if not is_version(tag) and not _NAME_RE.fullmatch(tag):
        raise RegistryInputError(
            f"model reference {ref!r}: tag {tag!r} is neither a version "
            f"({VERSION_LENGTH} lowercase hex digits) nor an alias ({NAME_RULE}): {how}"
        )
    return ModelRef(name=name, tag=tag)


def looks_like_ref(value: str) -> bool:
    """True when ``value`` parses as ``NAME@TAG`` (callers check for a local folder first)."""
    try:
        parse_ref(value)
    except RegistryInputError:
        return False
    return True


def is_safe_rel(rel: str) -> bool:
    """A relative POSIX path that stays inside its folder."""
    path = PurePosixPath(rel)
    return (
        bool(rel)
        and not path.is_absolute()
        and "\\" not in rel
        and all(part not in ("", ".", "..") for part in rel.split("/"))
    )


def cached_path(cache_dir: Path | str, name: str, version: str) -> Path:
    """Where :meth:`Registry.pull` puts ``name@version`` under ``cache_dir``."""
    return Path(cache_dir).expanduser() / name / version


# --- what the store holds ----------------------------------------------------------------


class Alias(BaseModel):
    """``models/<name>/<alias>.json``: which version of ``name`` the alias points at."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str
    version: str
    manifest_sha256: str | None = None
    published_at: str | None = None

    def to_bytes(self) -> bytes:
        return (
            json.dumps(self.model_dump(exclude_unset=True), indent=2, sort_keys=True) + "\n"
        ).encode()


@dataclass(frozen=True)
class Listing:
    """The versions (with a manifest or not) and the aliases published under one name."""

    versions: tuple[str, ...] = ()
    aliases: Mapping[str, Alias] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.versions and not self.aliases

    def aliases_of(self, version: str) -> list[str]:
        return sorted(a for a, doc in self.aliases.items() if doc.version == version)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``; the file is left in place (removing it would race)."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class Registry:
    """The models published in one store under one key prefix: list, resolve and pull."""

    def __init__(self, store: ObjectStore, prefix: str = "") -> None:
        self.store = store
        self.prefix = prefix

    @classmethod
    def from_settings(cls, settings: ConnectionSettings, client: object = None) -> Registry:
        """The registry in ``settings``' bucket under ``LCM_S3_PREFIX``."""
        return cls(ObjectStore.from_settings(settings, client=client), settings.s3_prefix)

    # --- keys

    def uri(self, name: str | None = None, version: str | None = None) -> str:
        """``s3://`` of every model, of one name, or of one version."""
        if name is None:
            return self.store.uri(models_root(self.prefix))
        if version is None:
            return self.store.uri(name_prefix(self.prefix, name))
        return self.store.uri(version_prefix(self.prefix, name, version))

    def object_key(self, name: str, version: str, rel: str) -> str:
        return object_key(self.prefix, name, version, rel)

    def alias_key(self, name: str, alias: str = DEFAULT_ALIAS) -> str:
        return alias_key(self.prefix, name, alias)

    # --- reads

    def names(self) -> list[str]:
        """Every model name with at least one object in the store."""
        root = models_root(self.prefix)
        prefixes, _ = self.store.list(root)
        names = [p[len(root) :].rstrip("/") for p in prefixes]
        return sorted(n for n in names if _NAME_RE.fullmatch(n))

    def read_alias(self, name: str, alias: str) -> Alias | None:
        """The alias document, or None when there is none; IntegrityError if it is damaged."""
        key = self.alias_key(name, alias)
        got = self.store.get(key)
        if got is None:
            return None
        raw = got[0]
        try:
            doc = Alias.model_validate_json(raw)
        except ValidationError:
            doc = None
        if doc is None or doc.name != name or not is_version(doc.version):
            try:
                shown = json.dumps(json.loads(raw))[:200]
            except ValueError as e:
                raise IntegrityError(
                    f"{self.store.uri(key)} is not valid JSON: {e}; publish again"
                ) from e
            raise IntegrityError(
                f"{self.store.uri(key)} is not an alias of {name!r} to a version: "
                f"{shown}; publish again to rewrite it"
            )
        return doc

    def listing(self, name: str) -> Listing:
        """The versions and aliases of one name."""
        base = name_prefix(self.prefix, name)
        prefixes, objects = self.store.list(base)
        versions = sorted(
            v for v in (p[len(base) :].rstrip("/") for p in prefixes) if is_version(v)
        )
        aliases: dict[str, Alias] = {}
        for obj in objects:
            rel = str(obj["Key"])[len(base) :]
            alias = rel.removesuffix(".json")
            if rel.endswith(".json") and _NAME_RE.fullmatch(alias):
                doc = self.read_alias(name, alias)
                if doc is not None:
                    aliases[alias] = doc
        return Listing(versions=tuple(versions), aliases=aliases)

    def unknown_name(self, name: str) -> UnknownModelError:
        known = ", ".join(self.names()) or "none"
        return UnknownModelError(
            f"unknown model name {name!r}: nothing is published under "
            f"{self.uri(name)} (published names: {known}); "
            "check the name, LCM_S3_BUCKET and LCM_S3_PREFIX, or publish it with "
            "`lcm-build publish ARTIFACT NAME`"
        )

    def resolve(self, ref: str | ModelRef) -> tuple[str, str]:
        """``name@latest`` / ``name@<alias>`` / ``name@<version>`` -> (name, version)."""
        parsed = parse_ref(ref)
        name = parsed.name
        version = parsed.version
        if version is None:
            doc = self.read_alias(name, parsed.tag)
            if doc is None:
                listing = self.listing(name)
                if listing.empty:
                    raise self.unknown_name(name)
                raise UnknownModelError(
                    f"model {name!r} has no alias {parsed.tag!r} "
                    f"({self.store.uri(self.alias_key(name, parsed.tag))} does not exist); "
                    f"aliases: {', '.join(sorted(listing.aliases)) or 'none'}; "
                    f"versions: {', '.join(listing.versions) or 'none'}; "
                    f"use {name}@VERSION or publish with --alias {parsed.tag}"
                )
            version = doc.version
        manifest_key = self.object_key(name, version, MANIFEST_NAME)
        if self.store.head(manifest_key) is None:
            listing = self.listing(name)
            if listing.empty:
                raise self.unknown_name(name)
            via = "" if parsed.version else f" ({name}@{parsed.tag} points to it)"
            raise UnknownModelError(
                f"unknown version {version!r} of model {name!r}{via}: "
                f"{self.store.uri(manifest_key)} does not exist; "
                f"published versions: {', '.join(listing.versions) or 'none'}"
                + (f"; aliases: {', '.join(sorted(listing.aliases))}" if listing.aliases else "")
            )
        return name, version

    # --- pull

    def pull(self, ref: str | ModelRef, cache_dir: Path | str) -> Path:
        """Download ``ref`` into ``cache_dir/<name>/<version>/`` unless it is there; return it.

        A pinned version already in the cache is returned without asking the store; an alias
        is resolved in the store first. Callers verify the returned folder (the worker does).
        """
        parsed = parse_ref(ref)
        if parsed.version is not None:
            cached = cached_path(cache_dir, parsed.name, parsed.version)
            if cached.is_dir():
                return cached
        name, version = self.resolve(parsed)
        target = cached_path(cache_dir, name, version)
        if target.is_dir():
            return target
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        with _locked(parent / f".{version}.lock"):
            if target.is_dir():  # another process finished it while we waited
                return target
            for stale in parent.glob(f".{version}.partial-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=parent))
            t0 = time.perf_counter()
            try:
                total = self._download_version(name, version, tmp)
                tmp.chmod(0o755)  # mkdtemp made it private; the files keep the umask's modes
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        logger.info(
            "pulled %s@%s (%d bytes) from %s into %s in %.1fs",
            name,
            version,
            total,
            self.uri(name, version),
            target,
            time.perf_counter() - t0,
        )
        return target

    def _download_version(self, name: str, version: str, dest: Path) -> int:
        """The manifest (its sha256 must be the version), then every file it lists, checked."""
        key = self.object_key(name, version, MANIFEST_NAME)
        got = self.store.get(key)
        if got is None:
            raise UnknownModelError(
                f"{self.store.uri(key)} does not exist: {name}@{version} is gone"
            )
        raw = got[0]
        sha = sha256_bytes(raw)
        if version_of(sha) != version:
            raise IntegrityError(
                f"{self.store.uri(key)} has sha256 {sha[:16]}..., which is not version {version}: "
                "the published manifest was changed; publish the artifact again"
            )
        try:
            manifest = Manifest.from_bytes(raw, self.store.uri(key))
        except ManifestError as e:
            raise IntegrityError(str(e)) from e
        (dest / MANIFEST_NAME).write_bytes(raw)
        total = 0
        for rel, entry in sorted(manifest.files.items()):
            if not is_safe_rel(rel):
                raise IntegrityError(
                    f"{self.store.uri(key)} lists {rel!r}, which is not a relative path inside "
                    "the artifact; refusing to download it"
                )
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            self._download_file(
                self.object_key(name, version, rel), target, entry.bytes, entry.sha256, rel
            )
            total += entry.bytes
        return total

    def _download_file(self, key: str, dest: Path, size: int, sha256: str, rel: str) -> None:
        def check(path: Path) -> None:
            actual_size = path.stat().st_size
            actual = sha256_file(path) if actual_size == size else None
            if actual != sha256:
                found = f"{actual_size} bytes" if actual is None else f"sha256 {actual[:16]}..."
                raise TransientStorageError(
                    f"{rel}: downloaded {self.store.uri(key)} has {found}, the manifest says "
                    f"{size} bytes with sha256 {sha256[:16]}...; if this persists the published "
                    "object is damaged: publish the version again"
                )

        try:
            self.store.download_file(key, dest, check)
        except ObjectNotFound as e:
            raise IntegrityError(
                f"{self.store.uri(key)} is missing: the published version is incomplete; "
                "publish it again"
            ) from e
