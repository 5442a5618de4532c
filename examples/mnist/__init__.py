"""MNIST-family classification example: data loading, model and training entry point."""
