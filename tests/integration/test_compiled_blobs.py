"""Compiled-model blobs on the real tiny INT8 artifact: a second start imports what the first
exported and renders the images of a plain compile; a blob OpenVINO cannot read is compiled."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from lcm_fleet.contract import Job
from worker.model.artifact import verify_artifact
from worker.render import blobs
from worker.render.blobs import BLOB_FILES, RECORD, BlobRecord
from worker.render.images import render
from worker.render.pipeline import GenaiPipeline, LoadKind

pytestmark = pytest.mark.slow  # six compiles or imports of the tiny pipeline


def test_a_second_start_imports_the_blobs_and_renders_the_same_images(model_dirs, tmp_path, caplog):
    model = verify_artifact(model_dirs["int8"])
    job = Job(prompt="a lighthouse at dusk", seed=11, num_images=2)
    blob_dir = str(tmp_path / "blobs")
    compiled = GenaiPipeline(model, "CPU", "", "default")
    first = GenaiPipeline(model, "CPU", str(tmp_path / "cache"), "default", blob_dir=blob_dir)
    second = GenaiPipeline(model, "CPU", str(tmp_path / "cache"), "default", blob_dir=blob_dir)
    assert first.loaded is LoadKind.COMPILED and second.loaded is LoadKind.IMPORTED
    assert first.blob_folder == second.blob_folder and first.blob_folder is not None
    expected = render(job, compiled).images
    for pipe in (first, second):
        for a, b in zip(expected, render(job, pipe).images, strict=True):
            assert a.pixels.std() > 0 and np.array_equal(a.pixels, b.pixels)

    # A blob OpenVINO cannot import, recorded as if exported so: warned about, compiled.
    folder = first.blob_folder
    unet = folder / BLOB_FILES[blobs.Component.UNET]
    unet.write_bytes(b"not a compiled model" * 100)
    record = BlobRecord.model_validate_json((folder / RECORD).read_bytes())
    files = {**record.files, BLOB_FILES[blobs.Component.UNET]: blobs._describe(unet)}
    (folder / RECORD).write_text(record.model_copy(update={"files": files}).model_dump_json())
    with caplog.at_level(logging.WARNING):
        third = GenaiPipeline(model, "CPU", "", "default", blob_dir=blob_dir)
    assert third.loaded is LoadKind.COMPILED
    assert "could not import the compiled-model blobs" in caplog.text
    for a, b in zip(expected, render(job, third).images, strict=True):
        assert np.array_equal(a.pixels, b.pixels)
    # ... and exported again: the next start imports.
    fourth = GenaiPipeline(model, "CPU", "", "default", blob_dir=blob_dir)
    assert fourth.loaded is LoadKind.IMPORTED
