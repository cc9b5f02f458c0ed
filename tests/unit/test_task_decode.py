import pytest

from lcm_fleet.errors import InvalidJob
from worker.consumer.tasks import NEVER_RETRY, decode_payload


def test_decodes_one_job_object():
    job = decode_payload(({"prompt": "x", "seed": 3},), {})
    assert job.seed == 3


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), (({"prompt": "x"}, 1), {}), ((), {"prompt": "x"}), (("just text",), {})],
)
def test_malformed_messages_are_invalid(args, kwargs):
    with pytest.raises(InvalidJob):
        decode_payload(args, kwargs)


def test_invalid_jobs_are_never_retried():
    assert InvalidJob in NEVER_RETRY
