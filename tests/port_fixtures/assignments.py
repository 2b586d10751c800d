"""Assignments into arrays in every place people put them, for tests/test_port.py."""

from abc import ABC, abstractmethod

import numpy as np

BUFFER = np.zeros(3)
LOG = []


class Holder:
    def __init__(self):
        self.cache = {"x": np.zeros(3)}
        self.grads = {"W": np.zeros((2, 3))}
        self.total = 0.0


class Base:
    def forward(self, x):
        return np.tanh(x)


class Child(Base):
    def forward(self, x):
        return super().forward(x) * 2.0


class Scale:
    def __init__(self, factor):
        self.factor = factor

    def __call__(self, x):
        return x * self.factor


class Pipeline:
    def __init__(self):
        self.layers = [Scale(2.0), Child(), Scale(0.5)]

    def run(self, x):
        for i in range(len(self.layers)):
            x = self.layers[i](x) if i != 1 else self.layers[i].forward(x)
        return x

    @staticmethod
    def square(x):
        return x**2


def nested_targets(w):
    """Attribute and nested subscript targets, plain and augmented."""
    h = Holder()
    for i in range(3):
        h.cache["x"][i] = w[i] * 2.0
        h.grads["W"][1, i] += w[i] ** 2
        h.total += w[i]
    return np.sum(h.cache["x"]) + np.sum(h.grads["W"]) + h.total


def global_target(w):
    """Assigns into a module-level array: the port must not touch the module's array."""
    BUFFER[:] = w
    LOG.append(np.sum(w))
    return np.sum(BUFFER**2)


def closure_target(w):
    out = np.zeros(3)

    def fill():
        for i in range(3):
            out[i] = np.sin(w[i])

    fill()
    return np.sum(out)


def tuple_targets(w):
    a = np.zeros(2)
    b = np.ones(2)
    a[0], b[1], c = w[0], w[1] * 3, w[2]
    (a[1], *rest) = (w[2], 1.0, 2.0)
    return np.sum(a) + np.sum(b) * c + sum(rest)


def add_at(w):
    out = np.zeros(3)
    np.add.at(out, [0, 0, 2], w)
    return np.sum(out**2)


def mask_assignments(w):
    x = w.copy()
    x[x < 0] = 0
    x[x > 1] *= 3
    y = np.zeros_like(w)
    y[np.array([True, False, True])] = w[[0, 2]]
    return np.sum(x) + np.sum(y**2)


def objects(w):
    pipeline = Pipeline()
    return np.sum(Pipeline.square(pipeline.run(w))) + sum(np.sum(s(w)) for s in [Scale(3.0)])


def list_indices(w):
    scores = np.outer(w, w)
    picked = scores[range(3), [2, 0, 1]]
    scores[[0, 1], [1, 2]] -= 1
    return np.sum(picked) + np.sum(scores)


class Layer(ABC):
    @abstractmethod
    def forward(self, x): ...


class Normalized(Layer):
    def __init__(self, w):
        self.w = np.asarray(w)
        self.norm = np.sqrt(np.sum(self.w**2))

    def forward(self, x):
        return x * self.w / self.norm


def abc_layers(w):
    """Layers whose base class has a metaclass (ABC), built from the parameters."""
    return np.sum(Normalized(w).forward(np.arange(3.0)) ** 2)
