"""MNIST-family classification with the Trainer (``python -m examples.mnist``): the seed's system, rebuilt.

* :mod:`.data`: digits, MNIST and Fashion-MNIST as tensors (IDX files, checksum-verified download);
* :mod:`.loaders`: the seeded train/validation split and the loaders;
* :mod:`.classifier`: the registered ``MLP`` and the seed's ``Classifier`` aggregate;
* :mod:`.compilation`: the ``Compiler`` pipeline (build, device, ``torch.compile``, epoch);
* :mod:`.cli`: the application layer: command line, dependency overrides, the Trainer and its callbacks.
"""
