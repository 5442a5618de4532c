"""The domain of the example: a registered ``MLP`` network and the seed's ``Classifier`` aggregate.

Follows the TorchSystem seed README (``src/classifier.py``): the aggregate groups the network, its criterion and
its optimizer; its identity is the registry hash of its network (:func:`~torchsystem_trainer.registry.gethash`),
so two classifiers built with the same hyper-parameters share an identity, and its ``onepoch`` hook commits the
domain events, so an early-stopping consumer that enqueues ``StopIteration`` ends the training at the epoch's end.

``MLP`` and ``Adam`` are registered with :func:`~torchsystem_trainer.registry.register`: their constructor
arguments are captured, which gives the aggregate its identity and the TensorBoard logger its hyper-parameters
(``nn/hidden_size``, ``optimizer/lr``...). ``Adam`` is a subclass of ``torch.optim.Adam`` registered here, rather
than ``register(torch.optim.Adam)``, which would change the class for every user of torch in the process.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from torchsystem_trainer import Aggregate
from torchsystem_trainer.registry import gethash, register

__all__ = ["MLP", "Adam", "Classifier", "build_parts"]


@register(excluded_args=[0])  # the parameters are not a hyper-parameter
class Adam(torch.optim.Adam):
    """``torch.optim.Adam`` (Kingma & Ba, 2015), registered so that its ``lr``, ``betas``... are captured."""


@register
class MLP(nn.Module):
    """A multilayer perceptron with one hidden layer: ``Linear -> ReLU -> Dropout -> Linear``.

    Args:
        input_size: features per sample (784 for 28x28 MNIST images, 64 for 8x8 digits).
        hidden_size: units of the hidden layer.
        output_size: classes (10).
        dropout: probability of zeroing a hidden unit while training; 0 disables dropout.

    Raises:
        ValueError: for a size < 1 or a dropout outside ``[0, 1)``.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        for name, size in (("input_size", input_size), ("hidden_size", hidden_size), ("output_size", output_size)):
            if size < 1:
                raise ValueError(f"MLP: {name}={size!r} is invalid; valid: an int >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP: dropout={dropout!r} is invalid; valid: a float in [0, 1)")
        self.layers = nn.Sequential(
            nn.Linear(input_size, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, output_size),
        )

    def forward(self, features: Tensor) -> Tensor:
        """Score each class.

        Args:
            features: [batch, input_size] float32.

        Returns:
            logits: [batch, output_size] float32.
        """
        return self.layers(features)  # type: ignore[no-any-return]


class Classifier(Aggregate):
    """The seed's image classifier: flattens the images, scores them with ``nn`` and learns with ``optimizer``.

    Its ``fit`` is written as the seed writes it (``zero_grad``, ``backward``, ``step`` by itself), except that it
    calls :meth:`~torchsystem_trainer.Aggregate.backward` rather than ``loss.backward()``, so the Trainer's
    strategy can scale the loss (``--precision 16-mixed``) and clip or accumulate gradients.

    Args:
        nn: the network, mapping [batch, features] float32 to [batch, classes] logits.
        criterion: the loss, e.g. ``CrossEntropyLoss()``.
        optimizer: the optimizer of ``nn``'s parameters.

    Attributes:
        epoch: epochs trained so far (0-based count); each assignment after the first commits the domain events.
        restored_from: the checkpoint its weights were restored from by the compilation pipeline, else ``None``.
    """

    def __init__(self, nn: nn.Module, criterion: nn.Module, optimizer: Optimizer) -> None:
        super().__init__()
        self.epoch = 0
        self.nn = nn
        self.criterion = criterion
        self.optimizer = optimizer
        self.flatten = torch.nn.Flatten()
        self.restored_from: str | None = None

    @property
    def id(self) -> str:
        """The registry hash of the network: 32 hex digits, the same for the same class and arguments."""
        return gethash(self.nn)

    def forward(self, inputs: Tensor) -> Tensor:
        """Score a batch of images.

        Args:
            inputs: [batch, 1, height, width] float32 ([batch, 1, 28, 28] for MNIST, [batch, 1, 8, 8] for digits).

        Returns:
            logits: [batch, classes] float32.
        """
        return self.nn(self.flatten(inputs))  # type: ignore[no-any-return]

    def fit(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """One optimizer step on a batch.

        Args:
            inputs: [batch, 1, height, width] float32.
            targets: [batch] int64 class indices.

        Returns:
            ``(predictions, loss)``: [batch] int64 predicted classes, and the [] float32 mean loss.
        """
        self.optimizer.zero_grad()
        outputs = self(inputs)
        loss = self.loss(outputs, targets)
        self.backward(loss)
        self.optimizer.step()
        return outputs.argmax(dim=1), loss

    def evaluate(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Score a batch without learning (the caller disables gradients).

        Args:
            inputs: [batch, 1, height, width] float32.
            targets: [batch] int64 class indices.

        Returns:
            ``(predictions, loss)``: [batch] int64 predicted classes, and the [] float32 mean loss.
        """
        outputs = self(inputs)
        return outputs.argmax(dim=1), self.loss(outputs, targets)

    def onepoch(self) -> None:
        """Commit the domain events after each epoch, as the seed does.

        Raises:
            StopIteration: when an early-stopping consumer enqueued it during the epoch.
        """
        self.events.commit()


def build_parts(
    input_size: int, hidden_size: int = 256, classes: int = 10, lr: float = 1e-3, dropout: float = 0.0
) -> tuple[MLP, nn.CrossEntropyLoss, Adam]:
    """Build what the compilation pipeline turns into a :class:`Classifier`.

    Args:
        input_size: features per flattened image (784 for MNIST, 64 for digits).
        hidden_size: units of the MLP's hidden layer.
        classes: output classes.
        lr: Adam's learning rate.
        dropout: the MLP's dropout probability.

    Returns:
        ``(nn, criterion, optimizer)``: the registered ``MLP``, ``CrossEntropyLoss()`` and ``Adam`` over the
        MLP's parameters.

    Raises:
        ValueError: for invalid sizes or dropout (see :class:`MLP`).
    """
    network = MLP(input_size, hidden_size, classes, dropout=dropout)
    return network, nn.CrossEntropyLoss(), Adam(network.parameters(), lr=lr)
