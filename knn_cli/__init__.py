"""knn: k-layer fully connected networks with optional batch normalization on CIFAR-10."""

__version__ = "0.1.0"
