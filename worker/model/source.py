"""Where the worker's artifact comes from: a local folder, or a published version from S3.

``LCM_MODEL_DIR=FOLDER`` or ``LCM_MODEL=FOLDER`` serve that folder. ``LCM_MODEL=NAME@VERSION``
or ``NAME@latest`` pulls the version published with ``lcm-build publish`` into
``LCM_MODEL_CACHE_DIR/<name>/<version>/`` once (lcm_fleet.artifact.registry). Either way the
folder is verified (every file's size and sha256, the format and OpenVINO versions) before
the worker serves it; a damaged cached copy is refused with the folder to delete.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lcm_fleet.artifact.registry import Registry, looks_like_ref
from lcm_fleet.errors import RegistryError, RegistryInputError, StorageError
from worker.errors import ModelLoadError
from worker.model import verified
from worker.model.artifact import ServedModel, open_artifact, verify_files_of
from worker.model.verified import VerifyMode
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)


def is_published_ref(value: str) -> bool:
    """``NAME@TAG`` that is not an existing folder."""
    return not Path(value).expanduser().is_dir() and looks_like_ref(value)


def local_model_dir(settings: WorkerSettings) -> Path:
    """The artifact folder to verify and serve, pulled from S3 first when LCM_MODEL is a ref."""
    if settings.model_dir is not None:
        return Path(settings.model_dir)
    value = settings.model
    if value is None:
        raise ModelLoadError(
            "set LCM_MODEL (NAME@VERSION, NAME@latest or a folder) or LCM_MODEL_DIR"
        )
    if not is_published_ref(value):
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ModelLoadError(
                f"LCM_MODEL={value!r} is neither an artifact folder nor a published model: "
                "set it to NAME@VERSION or NAME@latest (see `lcm-build list`) or to a folder "
                "built with `lcm-build build`"
            )
        return path
    registry = Registry.from_settings(settings)
    try:
        path = registry.pull(value, settings.model_cache_dir)
    except RegistryInputError as e:
        raise ModelLoadError(f"LCM_MODEL={value!r}: {e}") from e
    except (RegistryError, StorageError) as e:
        raise ModelLoadError(f"cannot pull LCM_MODEL={value!r} from {registry.uri()}: {e}") from e
    logger.info("LCM_MODEL=%s is %s", value, path)
    return path


@contextmanager
def _cached_copy_hint(settings: WorkerSettings, path: Path) -> Iterator[None]:
    """Say which folder to delete when a pulled (cached) copy is refused."""
    try:
        yield
    except ModelLoadError as e:
        if settings.model is not None and is_published_ref(settings.model):
            raise ModelLoadError(
                f"{e} This is the cached download of LCM_MODEL={settings.model}: delete the "
                f"folder {path} (rm -rf '{path}') and start the worker again to download it "
                "afresh."
            ) from e
        raise


def open_model(settings: WorkerSettings) -> ServedModel:
    """Pull if needed, then read and check the manifest; the files' hashes come later."""
    path = local_model_dir(settings)
    with _cached_copy_hint(settings, path):
        return open_artifact(path, settings.width, settings.height, settings.model_key)


def verify_model(settings: WorkerSettings, model: ServedModel) -> None:
    """Check every file's size and sha256, unless a verified marker shows that no file changed
    since the last full check (LCM_ARTIFACT_VERIFY); raise ModelLoadError saying how to fix it."""
    root = settings.model_cache_dir
    if settings.artifact_verify is VerifyMode.MARKER and verified.matches(
        root, model.path, model.manifest
    ):
        logger.info(
            "artifact %s verified by its marker: no file changed since it was last hashed "
            "(LCM_ARTIFACT_VERIFY=full hashes at every start)",
            model.path,
        )
        return
    before = verified.stat_files(model.path, model.manifest)
    with _cached_copy_hint(settings, model.path):
        verify_files_of(model)
    if settings.artifact_verify is VerifyMode.MARKER:
        verified.write(root, model.path, model.manifest, before)


def load_model(settings: WorkerSettings) -> ServedModel:
    """Pull if needed, then verify the folder, hashes included."""
    model = open_model(settings)
    verify_model(settings, model)
    return model
