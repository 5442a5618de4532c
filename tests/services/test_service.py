from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from torchsystem_trainer.depends import Depends
from torchsystem_trainer.services import Consumer, Service


def device() -> str:
    raise NotImplementedError("bound in the application layer")


def test_handler_is_registered_under_the_generated_name_and_handled_by_name() -> None:
    service = Service()

    @service.handler
    def train_model(model: str, epochs: int = 1) -> str:
        return f"{model} x{epochs}"

    assert list(service.handlers) == ["train-model"]
    assert service.handle("train-model", "mlp", epochs=3) == "mlp x3"


def test_handlers_is_the_live_table_as_upstream() -> None:
    service = Service()

    @service.handler
    def train(model: str) -> str:
        return model

    service.handlers["evaluate"] = lambda model: f"evaluated {model}"  # reaches handle
    assert service.handle("evaluate", "mlp") == "evaluated mlp"
    del service.handlers["train"]
    with pytest.raises(KeyError, match="no handler named 'train'"):
        service.handle("train", "mlp")

    @service.handler  # a name removed from the table can be registered again
    def train(model: str) -> str:  # noqa: F811
        return f"again {model}"

    assert service.handle("train", "mlp") == "again mlp"


def test_name_generator_is_a_constructor_argument() -> None:
    service = Service(generator=str.upper)

    @service.handler
    def evaluate(model: str) -> str:
        return model

    assert service.handle("EVALUATE", "mlp") == "mlp"


def test_decorated_handler_stays_callable_with_injection() -> None:
    service = Service()

    @service.handler
    def train(model: str, device: str = Depends(device)) -> str:
        return f"{model}@{device}"

    service.dependency_overrides[device] = lambda: "cpu"
    assert train("mlp") == "mlp@cpu"
    assert service.handle("train", "mlp") == "mlp@cpu"
    assert service.handle("train", "mlp", device="mps") == "mlp@mps"
    assert service.handlers["train"] is train


def test_override_method_changes_what_handlers_receive() -> None:
    service = Service()

    @service.handler
    def train(device: str = Depends(device)) -> str:
        return device

    service.override(device, lambda: "cuda:1")
    assert service.handle("train") == "cuda:1"
    assert service.dependency_overrides == {device: service.dependency_overrides[device]}


def test_unimplemented_dependency_error_names_service_handler_and_dependency() -> None:
    service = Service()

    @service.handler
    def train(model: str, device: str = Depends(device)) -> str:
        return device

    with pytest.raises(NotImplementedError, match=r"dependency 'device' of handler 'train' is not implemented: "
                       r"override it with service\.dependency_overrides\[device\] = \.\.\."):
        service.handle("train", "mlp")


def test_unknown_name_raises_key_error_listing_known_names() -> None:
    service = Service("training")

    @service.handler
    def train() -> None: ...

    @service.handler
    def validate() -> None: ...

    with pytest.raises(KeyError, match=r"no handler named 'fit'; known handlers: 'train', 'validate'"):
        service.handle("fit")


def test_registering_two_handlers_under_one_name_raises() -> None:
    service = Service()

    @service.handler
    def train_model() -> None: ...

    def train_model_again() -> None: ...

    train_model_again.__name__ = "train_model"
    with pytest.raises(ValueError, match="already has a handler named 'train-model'"):
        service.handler(train_model_again)


def test_handle_accepts_a_handler_parameter_called_name() -> None:
    service = Service()

    @service.handler
    def rename(name: str) -> str:
        return name.upper()

    assert service.handle("rename", name="mlp") == "MLP"


# The seed README's training system, verbatim except `torchsystem` -> `torchsystem_trainer` in the imports.
# Only src/domain.py is adapted: the README's version lacks its `Sequence`/`Iterator` imports, and `Events` is
# the lead's torchsystem_trainer.domain concern, so it is typed `Any` here.
SEED_DOMAIN = """
from typing import Any, Iterator, Protocol, Sequence

from torch import Tensor
from torch.nn import Module

class Model(Protocol):
    id: Any
    phase: str
    epoch: int
    events: Any
    nn: Module
    criterion: Module
    optimizer: Module

    def fit(self, *args, **kwargs) -> Any:...

    def evaluate(self, *args, **kwargs) -> Any:...

class Metric(Protocol):
    name: str
    value: Any

class Metrics(Protocol):

    def update(self, *args, **kwargs) -> None:...

    def compute(self) -> Sequence[Metric]:...

class Loader(Protocol):

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:...
"""

SEED_TRAINING = """
from typing import Sequence 

from torch import inference_mode
from torchsystem import Depends
from torchsystem.services import Service
from torchsystem.services import Producer, event

from src.domain import Model
from src.domain import Loader
from src.domain import Metric, Metrics 

service = Service() 
producer = Producer() 

@service.handler
def iterate(model: Model, loaders: Sequence[tuple[str, Loader]], metrics: Metrics):
    for phase, loader in loaders:
        train(model, loader, metrics) if phase == 'train' else validate(model, loader, metrics)
    train(model, loader, metrics) if phase == 'train' else validate(model, loader, metrics)
    producer.dispatch(Iterated(model, loaders))

@event
class Iterated:
    model: Model
    loaders: Sequence[tuple[str, Loader]]

def device() -> str:
    raise NotImplementedError("Override this dependency with a concrete implementation")

@service.handler
def train(model: Model, loader: Loader, metrics: Metrics, device: str = Depends(device)):
    model.phase = 'train'
    for batch, (input, target) in enumerate(loader, start=1):
        input, target = input.to(device), target.to(device)
        prediction, loss = model.fit(input, target)
        metrics.update(batch, loss, prediction, target)
    sequence = metrics.compute()
    producer.dispatch(Trained(model, loader, metrics))

@service.handler
def validate(model: Model, loader: Loader, metrics: Metrics, device: str = Depends(device)):
    model.phase = 'evaluation'
    with inference_mode():
        for batch, (input, target) in enumerate(loader, start=1):
            input, target = input.to(device), target.to(device)
            prediction, loss = model.evaluate(input, target)
            metrics.update(batch, loss, prediction, target)
        sequence = metrics.compute()
    producer.dispatch(Trained(model, loader, metrics))

@event
class Trained:
    model: Model
    loader: Loader
    metrics: Sequence[Metric]

@event
class Validated:
    model: Model
    loader: Loader
    metrics: Sequence[Metric]
"""

SEED_TENSORBOARD = """
from torchsystem import Depends
from torchsystem.services import Consumer
from torch.utils.tensorboard.writer import SummaryWriter
from src.services.training import (
    Trained,
    Validated
)

consumer = Consumer()

def writer() -> SummaryWriter:
    raise NotImplementedError("We don't want to handle the writer here!!!, will be injected later in the application layer") 


@consumer.handler
def deliver_metrics(event: Trained | Validated, writer: SummaryWriter = Depends(writer)):
    for metric in event.metrics:
        writer.add_scalar(f'{event.model.id}/{metric.name}/{event.model.phase}', metric.value, event.model.epoch)
"""

SEED_EARLYSTOPPING = """
from torchsystem.services import Subscriber
from torchsystem.services import Consumer

from src.services.training import Metric
from src.services.training import Trained, Validated

subscriber = Subscriber()
consumer = Consumer()

@consumer.handler
def deliver_metrics(event: Trained | Validated):
    for metric in event.metrics:
        try:
            subscriber.receive(metric, metric.name)
        except StopIteration:
            event.model.events.enqueue(StopIteration)

@subscriber.subscribe('loss')
def on_low_loss(metric: Metric):
    if metric.value < 0.001:
        raise StopIteration
    
@subscriber.subscribe('accuracy')
def on_high_accuracy(metric: Metric):
    if metric.value > 0.995:
        raise StopIteration
"""


def _port(source: str) -> str:
    """The only change a seed module needs: import from torchsystem_trainer instead of torchsystem."""
    return source.replace("from torchsystem", "from torchsystem_trainer")


@pytest.fixture
def seed_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Write the seed's ``src`` package to disk and make it importable; forget it afterwards."""
    files = {
        "src/__init__.py": "",
        "src/domain.py": SEED_DOMAIN,
        "src/services/__init__.py": "",
        "src/services/training.py": _port(SEED_TRAINING),
        "src/services/tensorboard.py": _port(SEED_TENSORBOARD),
        "src/services/earlystopping.py": _port(SEED_EARLYSTOPPING),
    }
    for relative, source in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(textwrap.dedent(source))
    for name in [name for name in sys.modules if name == "src" or name.startswith("src.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [name for name in sys.modules if name == "src" or name.startswith("src.")]:
        del sys.modules[name]


class Queue(list[Any]):
    """The part of the seed's Events that its early stopping uses."""

    def enqueue(self, item: Any) -> None:
        self.append(item)


class SeedClassifier(nn.Module):
    """The seed's Classifier, on nn.Module instead of Aggregate (torchsystem_trainer.domain is tested elsewhere)."""

    def __init__(self, nn: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().__init__()
        self.epoch = 0
        self.phase = "train"
        self.nn = nn
        self.criterion = criterion
        self.optimizer = optimizer
        self.events = Queue()

    @property
    def id(self) -> str:
        return "classifier"

    def forward(self, input: Tensor) -> Tensor:
        return self.nn(input)

    def fit(self, input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        self.optimizer.zero_grad()
        output = self(input)
        loss = self.criterion(output, target)
        loss.backward()
        self.optimizer.step()
        return torch.argmax(output, dim=1), loss

    def evaluate(self, input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        output = self(input)
        return torch.argmax(output, dim=1), self.criterion(output, target)


@dataclass
class Metric:
    name: str
    value: float


class Metrics:
    """Mean loss and accuracy of a phase; iterable, since the seed's events carry the Metrics object itself."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.hits: list[float] = []
        self.last: list[Metric] = []

    def update(self, batch: int, loss: Tensor, prediction: Tensor, target: Tensor) -> None:
        self.losses.append(loss.item())
        self.hits.extend((prediction == target).float().tolist())

    def compute(self) -> list[Metric]:
        self.last = [Metric("loss", sum(self.losses) / len(self.losses)), Metric("accuracy", sum(self.hits) / len(self.hits))]
        self.losses, self.hits = [], []
        return self.last

    def __iter__(self) -> Iterator[Metric]:
        return iter(self.last)


class RecordingWriter:
    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.log.append(("add_scalar", tag, step))


def test_seed_training_system_runs_unchanged(seed_app: Path) -> None:
    training = importlib.import_module("src.services.training")
    tensorboard = importlib.import_module("src.services.tensorboard")
    earlystopping = importlib.import_module("src.services.earlystopping")

    torch.manual_seed(0)
    inputs, targets = torch.randn(16, 4), torch.randint(0, 2, (16,))
    batches = [(inputs[i : i + 4], targets[i : i + 4]) for i in range(0, 16, 4)]
    loaders = [("train", batches[:3]), ("validation", batches[3:])]
    network = nn.Linear(4, 2)
    classifier = SeedClassifier(network, nn.CrossEntropyLoss(), torch.optim.SGD(network.parameters(), lr=0.1))
    before = network.weight.detach().clone()

    # Application layer, as in the seed's main.py (plus registering the consumers, which the README elides).
    log: list[tuple[Any, ...]] = []

    def summary_writer() -> Iterator[RecordingWriter]:
        log.append(("open",))
        yield RecordingWriter(log)
        log.append(("close",))

    training.service.dependency_overrides[training.device] = lambda: "cpu"
    tensorboard.consumer.dependency_overrides[tensorboard.writer] = summary_writer
    seen = Consumer()

    @seen.handler
    def record(event: training.Trained | training.Iterated) -> None:  # type: ignore[name-defined]
        log.append((type(event).__name__, event.model.phase))

    training.producer.register(tensorboard.consumer, earlystopping.consumer, seen)
    training.service.handle("iterate", classifier, loaders, Metrics())

    def phase(name: str) -> list[tuple[Any, ...]]:
        return [
            ("open",),
            ("add_scalar", f"classifier/loss/{name}", 0),
            ("add_scalar", f"classifier/accuracy/{name}", 0),
            ("close",),
            ("Trained", name),  # the README's validate() also dispatches Trained, not Validated
        ]

    # The README's iterate() runs its last phase once more after the loop; that is kept verbatim too.
    expected = phase("train") + phase("evaluation") + phase("evaluation") + [("Iterated", "evaluation")]
    assert log == expected
    assert not torch.equal(network.weight, before)  # the train phase stepped the optimizer
    assert list(classifier.events) == []  # the random data triggers no early stopping

    # The seed's early stopping: a StopIteration raised by a subscriber becomes a domain event on the model.
    earlystopping.consumer.consume(training.Trained(classifier, batches, [Metric("loss", 0.0001)]))
    earlystopping.consumer.consume(training.Validated(classifier, batches, [Metric("accuracy", 0.5)]))
    assert list(classifier.events) == [StopIteration]
