from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from torchsystem_trainer import depends
from torchsystem_trainer.depends import Dependency, Depends, Injector, Provider, inject


def device() -> str:
    raise NotImplementedError("bound in the application layer")


def test_dependency_is_resolved_at_call_time_with_late_overrides() -> None:
    provider = Provider()

    @inject(provider)
    def train(model: str, device: str = Depends(device)) -> tuple[str, str]:
        return model, device

    provider.dependency_overrides[device] = lambda: "cpu"
    assert train("mlp") == ("mlp", "cpu")
    provider.override(device, lambda: "cuda")
    assert train("mlp") == ("mlp", "cuda")


def test_dependency_without_override_calls_the_dependency_itself() -> None:
    def epoch() -> int:
        return 10

    @inject(Provider())
    def restore(epoch: int = Depends(epoch)) -> int:
        return epoch

    assert restore() == 10


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (("mlp", "mps"), {}, ("mlp", "mps")),
        (("mlp",), {"device": "mps"}, ("mlp", "mps")),
        ((), {"model": "mlp", "device": "mps"}, ("mlp", "mps")),
    ],
    ids=["positional", "keyword", "all-keywords"],
)
def test_explicit_arguments_win_over_dependencies(
    args: tuple[str, ...], kwargs: dict[str, str], expected: tuple[str, str]
) -> None:
    calls: list[str] = []
    provider = Provider()

    def cpu() -> str:
        calls.append("device")
        return "cpu"

    provider.override(device, cpu)

    @inject(provider)
    def train(model: str, device: str = Depends(device)) -> tuple[str, str]:
        return model, device

    assert train(*args, **kwargs) == expected
    assert calls == []


def test_nested_dependencies_are_resolved_with_the_same_overrides() -> None:
    def root() -> str:
        return "runs"

    def path(root: str = Depends(root), device: str = Depends(device)) -> str:
        return f"{root}/{device}"

    provider = Provider()
    provider.override(root, lambda: "/tmp/runs")
    provider.override(device, lambda: "cpu")

    @inject(provider)
    def log(path: str = Depends(path)) -> str:
        return path

    assert log() == "/tmp/runs/cpu"


def test_override_implementation_may_have_dependencies_of_its_own() -> None:
    def rank() -> int:
        return 3

    def cuda_device(rank: int = Depends(rank)) -> str:
        return f"cuda:{rank}"

    provider = Provider()
    provider.override(device, cuda_device)

    @inject(provider)
    def train(device: str = Depends(device)) -> str:
        return device

    assert train() == "cuda:3"


def test_dependency_is_resolved_once_per_call() -> None:
    calls: list[str] = []

    def seed() -> int:
        calls.append("seed")
        return len(calls)

    def generator(seed: int = Depends(seed)) -> str:
        return f"generator-{seed}"

    @inject(Provider())
    def sample(seed: int = Depends(seed), generator: str = Depends(generator)) -> tuple[int, str]:
        return seed, generator

    assert sample() == (1, "generator-1")
    assert sample() == (2, "generator-2")
    assert calls == ["seed", "seed"]


def test_use_cache_false_calls_the_dependency_for_every_use() -> None:
    calls: list[str] = []

    def counter() -> int:
        calls.append("counter")
        return len(calls)

    @inject(Provider())
    def pair(a: int = Depends(counter, use_cache=False), b: int = Depends(counter, use_cache=False)) -> tuple[int, int]:
        return a, b

    assert pair() == (1, 2)


def test_generator_dependency_cleans_up_after_the_call_in_reverse_order() -> None:
    log: list[str] = []

    def writer() -> Iterator[str]:
        log.append("open writer")
        yield "writer"
        log.append("close writer")

    def database() -> Iterator[str]:
        log.append("open database")
        yield "database"
        log.append("close database")

    @inject(Provider())
    def store(writer: str = Depends(writer), database: str = Depends(database)) -> str:
        log.append(f"store with {writer} and {database}")
        return "stored"

    assert store() == "stored"
    assert log == [
        "open writer",
        "open database",
        "store with writer and database",
        "close database",
        "close writer",
    ]


def test_generator_dependency_cleans_up_when_the_call_raises() -> None:
    log: list[str] = []

    def summary_writer() -> Iterator[str]:  # the seed's plain form: no try/finally around the yield
        yield "writer"
        log.append("closed")

    @inject(Provider())
    def deliver(writer: str = Depends(summary_writer)) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        deliver()
    assert log == ["closed"]


def test_generator_dependencies_entered_before_a_failing_one_are_cleaned_up() -> None:
    log: list[str] = []

    def writer() -> Iterator[str]:
        yield "writer"
        log.append("closed writer")

    provider = Provider()

    @inject(provider)
    def deliver(writer: str = Depends(writer), device: str = Depends(device)) -> None:
        log.append("called")

    with pytest.raises(NotImplementedError):
        deliver()
    assert log == ["closed writer"]


@pytest.mark.parametrize(
    ("body", "message"),
    [("none", "did not yield"), ("twice", "yielded more than once")],
    ids=["no-yield", "two-yields"],
)
def test_generator_dependency_must_yield_exactly_once(body: str, message: str) -> None:
    def resource() -> Iterator[int]:
        if body == "twice":
            yield 1
            yield 2
        return
        yield  # pragma: no cover (makes this a generator)

    @inject(Provider())
    def use(resource: int = Depends(resource)) -> int:
        return resource

    with pytest.raises(RuntimeError, match=message):
        use()


def test_unimplemented_dependency_names_the_dependency_and_the_handler() -> None:
    @inject(Provider("service"))
    def train(model: str, device: str = Depends(device)) -> str:
        return device

    with pytest.raises(NotImplementedError) as info:
        train("mlp")
    assert str(info.value) == (
        "dependency 'device' of handler 'train' is not implemented: "
        "override it with service.dependency_overrides[device] = ..."
    )
    assert isinstance(info.value.__cause__, NotImplementedError)
    assert str(info.value.__cause__) == "bound in the application layer"


def test_unimplemented_nested_dependency_names_the_innermost_dependency() -> None:
    def path(device: str = Depends(device)) -> str:
        return f"runs/{device}"

    @inject(Provider("compiler"))
    def save(path: str = Depends(path)) -> str:
        return path

    with pytest.raises(NotImplementedError, match=r"^dependency 'device' of handler 'save' is not implemented"):
        save()


def test_dependency_cycle_raises_recursion_error_naming_the_cycle() -> None:
    def a(b: int = Depends(lambda: 0)) -> int:
        return b

    def b(a_value: int = Depends(a)) -> int:
        return a_value

    provider = Provider()
    provider.override(a, lambda b_value=Depends(b): b_value)

    @inject(provider)
    def handler(value: int = Depends(a)) -> int:
        return value

    with pytest.raises(RecursionError, match="a -> b -> a"):
        handler()


def test_inject_preserves_the_function_metadata() -> None:
    def train(model: str, device: str = Depends(device)) -> str:
        """Train the model."""
        return model

    def plain(model: str) -> str:
        """No dependencies."""
        return model

    for function in (train, plain):
        wrapper = inject(Provider())(function)
        assert wrapper.__name__ == function.__name__
        assert wrapper.__doc__ == function.__doc__
        assert wrapper.__wrapped__ is function  # type: ignore[attr-defined]
        assert inspect.signature(wrapper) == inspect.signature(function)


def test_wrapper_without_dependencies_forwards_arguments_results_and_errors() -> None:
    @inject(Provider())
    def step(a: int, b: int = 2, *, c: int = 3) -> int:
        if a < 0:
            raise ValueError("negative")
        return a * 100 + b * 10 + c

    assert step(1) == 123
    assert step(1, 5, c=7) == 157
    with pytest.raises(ValueError, match="negative"):
        step(-1)


def test_signatures_are_read_at_decoration_not_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def epoch() -> int:
        return 1

    provider = Provider()

    @inject(provider)
    def plain(x: int) -> int:
        return x

    @inject(provider)
    def injected(x: int, epoch: int = Depends(epoch)) -> int:
        return x + epoch

    assert injected(1) == 2  # plans the dependency once
    reads: list[object] = []
    original = inspect.signature

    def counting(obj: object, *args: object, **kwargs: object) -> inspect.Signature:
        reads.append(obj)
        return original(obj, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(depends.inspect, "signature", counting)
    for x in range(5):
        assert plain(x) == x
        assert injected(x) == x + 1
    assert reads == []


def test_positional_only_and_keyword_only_dependencies() -> None:
    provider = Provider()
    provider.override(device, lambda: "cpu")

    @inject(provider)
    def positional(model: str, device: str = Depends(device), /) -> str:
        return f"{model}@{device}"

    @inject(provider)
    def keyword(model: str, *, device: str = Depends(device)) -> str:
        return f"{model}@{device}"

    assert positional("mlp") == "mlp@cpu"
    assert positional("mlp", "mps") == "mlp@mps"
    assert keyword("mlp") == "mlp@cpu"
    assert keyword("mlp", device="mps") == "mlp@mps"


def test_inject_works_on_methods() -> None:
    provider = Provider()
    provider.override(device, lambda: "cpu")

    class Trainer:
        @inject(provider)
        def fit(self, model: str, device: str = Depends(device)) -> str:
            return f"{type(self).__name__}:{model}@{device}"

    assert Trainer().fit("mlp") == "Trainer:mlp@cpu"


def test_depends_returns_a_marker_and_rejects_non_callables() -> None:
    marker = Depends(device)
    assert isinstance(marker, Dependency)
    assert marker.dependency is device
    assert marker.callable is device  # torchsystem 1.4.9's name for it
    assert repr(marker) == "Depends(device)"
    with pytest.raises(TypeError, match="callable"):
        Depends("device")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="override of 'device' must be callable"):
        Provider().override(device, "cpu")  # type: ignore[arg-type]


def test_injectors_can_share_a_provider_and_replace_their_overrides() -> None:
    shared = Provider()
    first, second = Injector(shared), Injector(shared)
    first.override(device, lambda: "cpu")
    assert second.dependency_overrides[device]() == "cpu"

    replacement = {device: lambda: "mps"}
    second.dependency_overrides = replacement
    assert first.dependency_overrides is replacement


def test_injector_subclass_that_skips_init_still_has_overrides() -> None:
    class Lazy(Injector):
        def __init__(self) -> None:  # deliberately no super().__init__()
            pass

    lazy = Lazy()
    lazy.override(device, lambda: "cpu")
    assert lazy.dependency_overrides[device]() == "cpu"
    assert lazy.provider.name == "lazy"


def test_override_goes_through_a_subclass_dependency_overrides() -> None:
    class Custom(Injector):
        def __init__(self) -> None:
            super().__init__()
            self.table: dict[Callable[..., Any], Callable[..., Any]] = {}

        @property  # type: ignore[misc]
        def dependency_overrides(self) -> dict[Callable[..., Any], Callable[..., Any]]:
            return self.table

    custom = Custom()
    custom.override(device, str)
    assert custom.table == {device: str}
    with pytest.raises(TypeError, match="must be callable"):
        custom.override(device, "cpu")  # type: ignore[arg-type]


def test_a_nested_generator_dependency_lives_until_the_handler_returned() -> None:
    log: list[str] = []

    def connection() -> Iterator[str]:
        log.append("open")
        yield "connection"
        log.append("close")

    def repository(connection: str = Depends(connection)) -> str:
        return f"repository({connection})"

    @inject(Provider())
    def handler(repository: str = Depends(repository)) -> None:
        log.append(f"use {repository}")

    handler()
    # torchsystem 1.4.9 closes the connection as soon as the repository is built, before the handler uses it
    assert log == ["open", "use repository(connection)", "close"]
