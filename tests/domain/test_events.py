import pytest

from torchsystem_trainer.domain import Event, Events


class Happened(Event):
    pass


class Carried(Event):
    def __init__(self, data: int) -> None:
        self.data = data


class Failed(Exception):
    pass


def test_commit_dispatches_in_enqueue_order_with_and_without_event_argument():
    seen: list[object] = []
    events = Events()
    events.handlers[Happened] = lambda: seen.append("happened")
    events.handlers[Carried] = lambda event: seen.append(("carried", event.data))
    events.handlers[KeyError] = [lambda: seen.append("key-1"), lambda e: seen.append(("key-2", e))]
    events.enqueue(Carried(7))
    events.enqueue(Happened)
    events.enqueue(KeyError)
    events.commit()
    assert seen == [("carried", 7), "happened", "key-1", ("key-2", KeyError)]
    assert len(events) == 0


def test_unhandled_events_are_ignored_but_unhandled_exceptions_are_raised_at_commit():
    events = Events()
    events.enqueue(Happened())
    events.enqueue(StopIteration)
    events.enqueue(Happened)
    with pytest.raises(StopIteration):
        events.commit()
    assert list(events.queue) == [Happened]  # the events after the raised one stay queued


@pytest.mark.parametrize("event", [Failed, Failed("boom")], ids=["class", "instance"])
def test_exception_class_or_instance_raises_when_unhandled(event):
    events = Events()
    events.enqueue(event)
    with pytest.raises(Failed):
        events.commit()


def test_handled_exception_is_not_raised():
    seen = []
    events = Events()
    events.handlers[Failed] = lambda e: seen.append(type(e).__name__)
    events.enqueue(Failed("x"))
    events.commit()
    assert seen == ["Failed"]


@pytest.mark.parametrize(
    "make",
    [
        lambda handler: handler,
        lambda handler: [handler],
        lambda handler: (handler,),
        lambda handler: {handler},
        lambda handler: (h for h in [handler]),
    ],
    ids=["single", "list", "tuple", "set", "generator"],
)
def test_handlers_may_be_any_iterable_and_every_event_reaches_them(make):
    seen: list[int] = []
    events = Events()
    events.handlers[Carried] = make(lambda event: seen.append(event.data))
    for data in (1, 2):
        events.enqueue(Carried(data))
        events.commit()
    events.enqueue(Carried(3))
    events.commit()
    assert seen == [1, 2, 3]  # a generator is kept as a tuple when first used, so it is not spent after one event


def test_a_falsy_event_does_not_end_the_commit():
    class Empty(Event):
        def __len__(self) -> int:
            return 0

    seen = []
    events = Events()
    events.handlers[Empty] = lambda: seen.append("empty")
    events.handlers[Happened] = lambda: seen.append("happened")
    events.enqueue(Empty())
    events.enqueue(Happened)
    events.commit()
    assert seen == ["empty", "happened"] and len(events) == 0
