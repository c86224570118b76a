"""The exercises, one module each; importing the package registers them all.

Registration order is the catalog's order (``backprop-suite learn --list``): from the
linear layer up, one family at a time, the second-order costate last.
"""

from suite.learn.exercises import linear  # noqa: I001  (the import order is the catalog's)
from suite.learn.exercises import activations_losses
from suite.learn.exercises import mlp
from suite.learn.exercises import conv2d
from suite.learn.exercises import pooling
from suite.learn.exercises import rnn
from suite.learn.exercises import lstm
from suite.learn.exercises import gru
from suite.learn.exercises import layernorm
from suite.learn.exercises import batchnorm
from suite.learn.exercises import attention
from suite.learn.exercises import embedding
from suite.learn.exercises import omega

__all__ = ["linear", "activations_losses", "mlp", "conv2d", "pooling", "rnn", "lstm", "gru",
           "layernorm", "batchnorm", "attention", "embedding", "omega"]
