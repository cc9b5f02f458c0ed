import pytest

from worker.consumer.deliveries import (
    JobAbandoned,
    count_delivery,
    forget_deliveries,
    uncount_delivery,
)


class DictRedis:
    def __init__(self):
        self.values, self.ttls = {}, {}

    def incr(self, key):
        self.values[key] = self.values.get(key, 0) + 1
        return self.values[key]

    def expire(self, key, ttl):
        self.ttls[key] = ttl

    def decr(self, key):
        self.values[key] = self.values.get(key, 0) - 1
        return self.values[key]

    def delete(self, key):
        self.values.pop(key, None)


def test_job_is_abandoned_after_max_deliveries():
    r = DictRedis()
    assert [count_delivery(r, "t", 0, 3, 60) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(JobAbandoned, match="delivered 4 times"):
        count_delivery(r, "t", 0, 3, 60)
    # A task-level retry is a new delivery series; finishing forgets the count.
    assert count_delivery(r, "t", 1, 3, 60) == 1
    forget_deliveries(r, "t", 1)
    assert count_delivery(r, "t", 1, 3, 60) == 1
    assert set(r.ttls.values()) == {60}


def test_a_job_given_back_on_purpose_does_not_count_its_delivery():
    r = DictRedis()
    for _ in range(10):  # given back ten times: never abandoned
        assert count_delivery(r, "t", 0, 3, 60) == 1
        uncount_delivery(r, "t", 0)
    assert "t" not in str(r.values)  # the counter is gone, not left at 0
    assert count_delivery(r, "t", 0, 3, 60) == 1
    assert count_delivery(r, "t", 0, 3, 60) == 2  # a real redelivery still counts
