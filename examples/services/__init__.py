"""The seed README's services-style training system, without the Trainer (``python -m examples.services``).

The same domain as :mod:`examples.mnist` (the ``Classifier`` aggregate and its ``Compiler`` pipeline), trained by
the framework's building blocks alone, as the TorchSystem README builds it:

* :mod:`.domain`: the protocols the services are written against (``Model``, ``Metrics``, ``Loader``);
* :mod:`.training`: a ``Service`` with ``iterate``/``train``/``validate``/``test`` handlers and a ``Producer``
  of the ``Trained``/``Validated``/``Tested``/``Iterated`` events;
* :mod:`.tensorboard`: a ``Consumer`` writing the metrics through an injected ``SummaryWriter``;
* :mod:`.earlystopping`: a ``Consumer`` forwarding metrics to a ``Subscriber`` whose handlers raise
  ``StopIteration``, enqueued as a domain event and raised by the aggregate's ``onepoch``;
* :mod:`.metrics`: a ``Metrics`` implementation (mean loss and accuracy);
* :mod:`.app`: the application layer that binds the dependencies and runs the epochs.
"""
