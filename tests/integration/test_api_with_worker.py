"""lcm-api with a real worker (the tiny INT8 model, 128x128): the official ``openai`` client
(errors as its exceptions, images as URLs and base64), and a job followed by its events to
PNGs that download."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from tests.integration.conftest import ApiProcess, WorkerProcess, api_env, start_api, stop_api


@pytest.fixture(scope="module")
def openai_api(
    service_env: dict[str, str], queue_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    tmp = tmp_path_factory.mktemp("api-openai")
    env = api_env(
        service_env, queue_name, LCM_SERVED_SIZES="128x128", LCM_OPENAI_WAIT_TIMEOUT_S="120"
    )
    api = start_api(env, tmp / "api.log")
    yield api
    stop_api(api)


@pytest.fixture(scope="module")
def client(openai_api: ApiProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{openai_api.url}/v1", api_key=openai_api.create_key("openai"), max_retries=0
    )


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"size": "1024x1024"}, "size"),
        ({"size": "big"}, "size"),
        ({"n": 9}, "n"),
        ({"response_format": "png"}, "response_format"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_bad_fields_raise_bad_request_naming_the_field(
    client: openai.OpenAI, kwargs: dict[str, object], param: str
) -> None:
    args: dict[str, object] = {"prompt": "a red circle", **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(**args)  # type: ignore[arg-type]
    error = caught.value
    assert error.status_code == 400 and error.param == param
    assert param in error.message and "allowed" in error.message


def test_a_bad_key_raises_authentication_error(openai_api: ApiProcess) -> None:
    bad = openai.OpenAI(base_url=f"{openai_api.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.images.generate(prompt="x")


def test_generate_waits_for_the_worker_and_returns_urls(
    client: openai.OpenAI, worker: WorkerProcess, tmp_path: Path
) -> None:
    answer = client.images.generate(prompt="a red circle", n=2, size="128x128")
    assert answer.data is not None and len(answer.data) == 2
    for image in answer.data:
        assert image.url
        data = httpx.get(image.url, timeout=30).content
        assert Image.open(io.BytesIO(data)).size == (128, 128)

    b64 = client.images.generate(prompt="a blue square", response_format="b64_json")
    assert b64.data is not None and b64.data[0].b64_json
    png = base64.b64decode(b64.data[0].b64_json)
    assert Image.open(io.BytesIO(png)).size == (128, 128) and hashlib.sha256(png).hexdigest()


def test_a_job_is_followed_to_its_pngs(openai_api: ApiProcess, worker: WorkerProcess) -> None:
    key = openai_api.create_key("follower")
    with httpx.Client(
        base_url=openai_api.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as c:
        answer = c.post("/v1/jobs", json={"prompt": "a red circle", "num_images": 2, "steps": 4})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        events: list[tuple[str, dict[str, object]]] = []
        with c.stream("GET", f"/v1/jobs/{job_id}/events", timeout=120) as stream:
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    events.append((event, json.loads(line.split(":", 1)[1])))
        states = [d["state"] for e, d in events if e == "state"]
        assert states[0] in ("queued", "running") and states[-1] == "succeeded"
        assert any(e == "progress" for e, _ in events)
        view = c.get(f"/v1/jobs/{job_id}").json()
        assert view["state"] == "succeeded" and len(view["result"]["images"]) == 2
        for image in view["result"]["images"]:
            data = httpx.get(image["url"], timeout=30).content
            assert hashlib.sha256(data).hexdigest() == image["sha256"]
            streamed = c.get(image["image_url"])
            assert streamed.headers["content-type"] == "image/png"
            assert streamed.content == data
