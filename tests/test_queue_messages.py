"""The queue messages EventFlow writes are the ones Huey itself would write."""

import uuid

import pytest
from huey import RedisHuey
from huey.serializer import Serializer

from eventflow.tasks.queue import message_writer


def _huey(serializer: Serializer | None = None) -> RedisHuey:
    huey = RedisHuey("eventflow-messages-test", results=False, serializer=serializer)

    @huey.task(name="process_event")
    def process_event(event_id: str) -> None:
        pass

    huey.test_task = process_event
    return huey


@pytest.mark.parametrize(
    "serializer", [None, Serializer(compression=True)], ids=["plain", "compressed"]
)
def test_a_written_message_reads_back_as_hueys_own(serializer):
    huey = _huey(serializer)
    write = message_writer(huey, huey.test_task)
    event_ids = [str(uuid.uuid4()) for _ in range(3)]

    tasks = [huey.deserialize_task(write(event_id)) for event_id in event_ids]
    reference = huey.deserialize_task(huey.serialize_task(huey.test_task.s(event_ids[0])))

    assert [task.args for task in tasks] == [(event_id,) for event_id in event_ids]
    for task in tasks:
        assert task.name == reference.name
        assert (task.eta, task.retries, task.retry_delay, task.priority, task.kwargs) == (
            reference.eta,
            reference.retries,
            reference.retry_delay,
            reference.priority,
            reference.kwargs,
        )
        assert huey.ready_to_run(task)
    assert len({task.id for task in tasks}) == 3


def test_an_id_of_another_length_still_makes_a_valid_message():
    huey = _huey()
    write = message_writer(huey, huey.test_task)

    for odd in ("short", "x" * 40, "é" * 36):
        assert huey.deserialize_task(write(odd)).args == (odd,)
