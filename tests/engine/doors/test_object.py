"""check_object on objects as people write them: tied weights, layer objects, paths, hooks.

Every class here is written the way from-scratch NumPy code keeps its parameters: an autoencoder
whose decoder is the encoder's transpose, a net whose layer objects hold references into its
``params`` dict, a language model whose output layer reuses the embedding, a batch-norm layer
with running statistics beside its parameters, layers that accumulate gradients with ``+=``,
and a layer that hands its gradient to an optimizer. No JAX is written.
"""

from __future__ import annotations

import dataclasses
from collections import namedtuple

import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck._engine.system import snapshot

RNG = np.random.default_rng(11)

# --------------------------------------------------------------------------------------------
# Tied weights: W_dec = W_enc.T
# --------------------------------------------------------------------------------------------


class TiedAutoencoder:
    def __init__(self, n_in=6, n_hidden=3, seed=0):
        rng = np.random.default_rng(seed)
        self.W_enc = rng.normal(scale=0.5, size=(n_in, n_hidden))
        self.b_enc = np.zeros(n_hidden) + 0.1
        self.W_dec = self.W_enc.T  # tied: a view, not a copy
        self.b_dec = np.zeros(n_in) - 0.1

    def forward(self, X):
        self.H = np.tanh(X @ self.W_enc + self.b_enc)
        return self.H @ self.W_dec + self.b_dec

    def loss(self, X):
        R = self.forward(X) - X
        return 0.5 * np.sum(R**2) / len(X)

    def backward(self, X):
        R = (self.forward(X) - X) / len(X)
        dW_dec = self.H.T @ R
        dZ = (R @ self.W_dec.T) * (1 - self.H**2)
        dW_enc = X.T @ dZ + self.decoder_share(dW_dec)
        return {"W_enc": dW_enc, "b_enc": dZ.sum(0), "b_dec": R.sum(0), "W_dec": dW_dec}

    def decoder_share(self, dW_dec):
        return dW_dec.T


class ForgetsTheDecoder(TiedAutoencoder):
    def decoder_share(self, dW_dec):
        return 0.0  # bug: the decoder's use of W_enc is left out


XA = RNG.normal(size=(5, 6))
TIED = ("W_enc", "b_enc", "b_dec")


def test_tied_transpose_correct_gradient_passes():
    ae = TiedAutoencoder()
    report = jc.check_object(ae, lambda m: m.loss(XA), lambda m: m.backward(XA), attributes=TIED)
    assert report.ok and report.twin == "ported", str(report)
    assert list(report.leaves) == ["W_enc", "b_enc", "b_dec"]


def test_tied_transpose_forgetting_the_decoder_share_fails_in_w_enc():
    ae = ForgetsTheDecoder()
    report = jc.check_object(ae, lambda m: m.loss(XA), lambda m: m.backward(XA), attributes=TIED)
    assert report.failing == ["W_enc"], str(report)


def test_tied_weight_checked_through_its_view():
    # Checking W_dec (the view) perturbs W_enc with it: the total is dW_dec + dW_enc.T.
    ae = TiedAutoencoder()

    def grad(m):
        g = m.backward(XA)
        return {"W_dec": g["W_enc"].T, "b_enc": g["b_enc"]}

    report = jc.check_object(ae, lambda m: m.loss(XA), grad, attributes=("W_dec", "b_enc"))
    assert report.ok, str(report)

    def decoder_only(m):
        g = m.backward(XA)
        return {"W_dec": g["W_dec"], "b_enc": g["b_enc"]}

    report = jc.check_object(ae, lambda m: m.loss(XA), decoder_only, attributes=("W_dec", "b_enc"))
    assert report.failing == ["W_dec"], str(report)


def test_tied_view_stays_a_view_of_the_perturbed_weight():
    # In NumPy calls the tie is the user's: a write through W_enc is seen through W_dec.
    ae, seen = TiedAutoencoder(), []
    original = id(ae.W_enc)  # not the array itself: a loss holding it would read stale values

    def loss(m):
        if type(m.W_enc) is np.ndarray:  # the NumPy calls, not the traced twin
            m.W_enc[0, 1] += 1.0
            seen.append((m.W_dec[1, 0] == m.W_enc[0, 1], id(m.W_enc) != original))
            m.W_enc[0, 1] -= 1.0
        return m.loss(XA)

    report = jc.check_object(ae, loss, lambda m: m.backward(XA), attributes=TIED)
    assert report.ok, str(report)
    assert seen and all(view and fresh for view, fresh in seen), seen
    assert id(ae.W_enc) == original and ae.W_dec.base is ae.W_enc


@pytest.mark.parametrize("fail", [False, True], ids=["passing", "raising"])
def test_tied_object_left_exactly_as_found(fail):
    ae = TiedAutoencoder()
    W_enc, W_dec, state = ae.W_enc, ae.W_dec, dict(vars(ae))
    values = W_enc.copy()

    def grad(m):
        m.W_dec[0, 0] = 99.0  # an in-place write through the view, then (maybe) an error
        if fail:
            raise RuntimeError("exploded")
        return m.backward(XA)

    if fail:
        with pytest.raises(jc.UserCodeError, match="exploded"):
            jc.check_object(ae, lambda m: m.loss(XA), grad, attributes=TIED)
    else:
        jc.check_object(ae, lambda m: m.loss(XA), grad, attributes=TIED)
    assert vars(ae).keys() == state.keys() and all(vars(ae)[k] is v for k, v in state.items())
    assert ae.W_dec is W_dec and ae.W_dec.base is W_enc and np.array_equal(W_enc, values)


# --------------------------------------------------------------------------------------------
# Layer objects holding references into a params dict
# --------------------------------------------------------------------------------------------


class Dense:
    def __init__(self, W, b):
        self.W, self.b = W, b  # references into the net's params, as many libraries keep them

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW, self.db = self.x.T @ dout, dout.sum(axis=0)
        return dout @ self.W.T


class Relu:
    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask


class LayeredNet:
    """params hold the arrays; the layers hold the same arrays and do the work."""

    def __init__(self, sizes=(4, 5, 3), seed=2):
        rng = np.random.default_rng(seed)
        self.params = {}
        self.layers = []
        for i, (n, m) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            self.params[f"W{i}"] = rng.normal(scale=0.7, size=(n, m))
            self.params[f"b{i}"] = rng.normal(scale=0.1, size=m)
            self.layers.append(Dense(self.params[f"W{i}"], self.params[f"b{i}"]))
            self.layers.append(Relu())
        self.layers.pop()

    def loss(self, X, y):
        out = X
        for layer in self.layers:
            out = layer.forward(out)
        shifted = out - out.max(axis=1, keepdims=True)
        p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        loss = -np.mean(np.log(p[np.arange(len(y)), y]))
        dout = p.copy()
        dout[np.arange(len(y)), y] -= 1
        dout = self.scale(dout / len(y))
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        grads = {}
        for i, layer in enumerate(self.layers[::2], start=1):
            grads[f"W{i}"], grads[f"b{i}"] = layer.dW, layer.db
        return loss, grads

    def scale(self, dout):
        return dout


class LayeredNetMeanTwice(LayeredNet):
    def scale(self, dout):
        return dout / 2  # bug: a second mean over a batch of 2... it is not


XL, YL = RNG.normal(size=(6, 4)), RNG.integers(0, 3, size=6)


def test_layer_objects_referencing_the_params_dict():
    net = LayeredNet()
    report = jc.check_object(net, lambda m: m.loss(XL, YL), attributes="params")
    assert report.ok, str(report)


def test_layer_objects_referencing_the_params_dict_bug_is_found():
    report = jc.check_object(LayeredNetMeanTwice(), lambda m: m.loss(XL, YL), attributes="params")
    assert sorted(report.failing) == ["W1", "W2", "b1", "b2"], str(report)
    assert all(abs(leaf.ratio - 0.5) < 1e-6 for leaf in report.leaves.values())


def test_layer_objects_by_path():
    net = LayeredNet()
    paths = ("layers/2/W", "layers/0/b")

    def grad(m):
        m.loss(XL, YL)
        return m.layers[2].dW, m.layers[0].db

    report = jc.check_object(net, lambda m: m.loss(XL, YL)[0], grad, attributes=paths)
    assert report.ok and list(report.leaves) == list(paths), str(report)
    assert net.layers[2].W is net.params["W2"] and not hasattr(net.layers[2], "dW")


# --------------------------------------------------------------------------------------------
# An embedding tied to the output layer
# --------------------------------------------------------------------------------------------


class TinyLanguageModel:
    """Embeds tokens, averages, and scores the vocabulary with the same matrix (tied)."""

    def __init__(self, vocab=7, dim=4, seed=3):
        rng = np.random.default_rng(seed)
        self.embedding = {"E": rng.normal(scale=0.5, size=(vocab, dim))}
        self.output = {"W": self.embedding["E"], "b": np.zeros(vocab)}  # the same array

    def loss(self, context, target):
        E, W, b = self.embedding["E"], self.output["W"], self.output["b"]
        h = E[context].mean(axis=1)  # (batch, dim)
        logits = h @ W.T + b
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        n = len(target)
        loss = -np.log(p[np.arange(n), target]).mean()
        dlogits = p.copy()
        dlogits[np.arange(n), target] -= 1
        dlogits /= n
        dW = dlogits.T @ h
        dh = dlogits @ W
        dE = np.zeros_like(E)
        for i in range(context.shape[1]):
            np.add.at(dE, context[:, i], dh / context.shape[1])
        return loss, {"E": self.tie(dE, dW), "b": dlogits.sum(axis=0)}

    def tie(self, dE, dW):
        return dE + dW


class UntiedGradient(TinyLanguageModel):
    def tie(self, dE, dW):
        return dE  # bug: the output layer's share of E is missing


CONTEXT, TARGET = RNG.integers(0, 7, size=(5, 3)), RNG.integers(0, 7, size=5)


def test_embedding_tied_to_the_output_layer():
    model = TinyLanguageModel()
    paths = ("embedding/E", "output/b")
    report = jc.check_object(model, lambda m: m.loss(CONTEXT, TARGET), attributes=paths)
    assert report.ok and list(report.leaves) == list(paths), str(report)
    report = jc.check_object(UntiedGradient(), lambda m: m.loss(CONTEXT, TARGET), attributes=paths)
    assert report.failing == ["embedding/E"], str(report)


# --------------------------------------------------------------------------------------------
# Slices of one flat parameter vector
# --------------------------------------------------------------------------------------------


class FlatParameterNet:
    """Keeps all weights in one vector (for an optimizer) and views into it per layer."""

    def __init__(self, seed=4):
        rng = np.random.default_rng(seed)
        self.theta = rng.normal(scale=0.5, size=3 * 4 + 4 + 4)
        self.W = self.theta[:12].reshape(3, 4)
        self.b = self.theta[12:16]
        self.v = self.theta[16:]

    def loss(self, X):
        h = np.tanh(X @ self.W + self.b)
        # The regulariser reads the flat vector: it sees every perturbation too.
        return np.sum(h @ self.v) + 0.05 * np.sum(self.theta**2)

    def grad(self, X, reg=0.1):
        h = np.tanh(X @ self.W + self.b)
        dz = np.outer(np.ones(len(X)), self.v) * (1 - h**2)
        return {"W": X.T @ dz + reg * self.W, "b": dz.sum(0) + reg * self.b}


XF = RNG.normal(size=(4, 3))


def test_views_into_a_flat_parameter_vector():
    net = FlatParameterNet()
    theta = net.theta.copy()
    report = jc.check_object(net, lambda m: m.loss(XF), lambda m: m.grad(XF), attributes=("W", "b"))
    assert report.ok, str(report)
    report = jc.check_object(
        net, lambda m: m.loss(XF), lambda m: m.grad(XF, reg=0.0), attributes=("W", "b")
    )
    assert report.failing == ["W", "b"], str(report)
    assert np.array_equal(net.theta, theta) and net.W.base is net.theta


# --------------------------------------------------------------------------------------------
# What cannot be perturbed as one parameter is refused, naming both places
# --------------------------------------------------------------------------------------------


class QuantisedCopy(TinyLanguageModel):
    def __init__(self):
        super().__init__()
        self.cache = {"E_bits": self.embedding["E"].view(np.float32)}  # another dtype


class ShiftedView:
    def __init__(self):
        self.buffer = np.arange(1.0, 21.0)
        self.W = self.buffer[:16].reshape(4, 4)
        raw = self.buffer.view(np.uint8)[4:-4]
        self.odd = raw.view(np.float64)  # starts half-way into an element of W

    def loss(self, X):
        return float(np.sum((X @ self.W) ** 2))


def test_unmappable_views_are_refused_naming_both_places():
    model = QuantisedCopy()
    with pytest.raises(jc.InputError, match=r"obj\.cache/E_bits .* 'embedding/E'"):
        jc.check_object(model, lambda m: m.loss(CONTEXT, TARGET), attributes="embedding/E")
    with pytest.raises(jc.InputError, match=r"obj\.odd .*shares memory with .*'W'"):
        jc.check_object(ShiftedView(), lambda m: m.loss(XF.T), lambda m: m.W, attributes="W")


def test_two_checked_parameters_sharing_memory_are_refused():
    ae = TiedAutoencoder()
    with pytest.raises(jc.InputError, match=r"'W_enc' and 'W_dec' share memory"):
        jc.check_object(
            ae, lambda m: m.loss(XA), lambda m: m.backward(XA), attributes=("W_enc", "W_dec")
        )


# --------------------------------------------------------------------------------------------
# Properties and __slots__
# --------------------------------------------------------------------------------------------


class Scaled:
    def __init__(self):
        self._w = np.array([0.5, -1.5, 2.0])

    @property
    def w(self):
        return self._w  # read-only, but the array it returns lives in self._w


class ScaledCopy(Scaled):
    @property
    def w(self):
        return self._w.copy()  # a fresh array on every read: nothing to perturb


def test_property_without_a_setter():
    net = Scaled()
    report = jc.check_object(net, lambda n: np.sum(n.w**3), lambda n: 3 * n.w**2, attributes="w")
    assert report.ok, str(report)
    with pytest.raises(jc.InputError, match="obj.w is a property without a setter"):
        jc.check_object(
            ScaledCopy(), lambda n: np.sum(n.w**3), lambda n: 3 * n.w**2, attributes="w"
        )


class Module:
    """Registers the arrays assigned to it in self._parameters, as torch's nn.Module does."""

    def __init__(self):
        object.__setattr__(self, "_parameters", {})

    def __setattr__(self, name, value):
        if isinstance(value, np.ndarray):
            self._parameters[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        try:
            return self._parameters[name]
        except KeyError:
            raise AttributeError(name) from None


class ModuleLinear(Module):
    def __init__(self, seed=8):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.weight = rng.normal(size=(2, 3))
        self.bias = np.array([0.1, -0.2])

    def loss(self, x):
        return np.sum(np.sin(x @ self.weight.T + self.bias))

    def grad(self, x):
        c = np.cos(x @ self.weight.T + self.bias)
        return {"weight": c.T @ x, "bias": c.sum(axis=0)}


def test_attributes_provided_by_getattr():
    x = RNG.normal(size=(4, 3))
    layer = ModuleLinear()
    params = dict(layer._parameters)
    report = jc.check_object(
        layer, lambda m: m.loss(x), lambda m: m.grad(x), attributes=("weight", "bias")
    )
    assert report.ok, str(report)
    assert layer._parameters == params and "weight" not in vars(layer)
    with pytest.raises(jc.InputError, match=r"ModuleLinear object has no attribute 'weights'"):
        jc.check_object(layer, lambda m: m.loss(x), lambda m: m.grad(x), attributes="weights")


@dataclasses.dataclass(frozen=True)
class FrozenLinear:
    W: np.ndarray

    def loss(self, x):
        return np.sum((x @ self.W) ** 2)


def test_an_attribute_that_cannot_be_set_is_named():
    model = FrozenLinear(np.eye(2))
    with pytest.raises(jc.InputError, match=r"jaxcheck cannot set obj\.W \(FrozenInstanceError"):
        jc.check_object(model, lambda m: m.loss(XF[:, :2]), lambda m: 2 * m.W, attributes="W")


class SlottedLayer:
    __slots__ = ("W", "b", "cache", "__calls")

    def __init__(self):
        self.W = np.array([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2]])
        self.b = np.array([0.05, -0.05])
        self.__calls = 0

    def loss(self, x):
        self.__calls += 1
        self.cache = np.tanh(x @ self.W + self.b)
        return np.sum(self.cache**2)

    def grad(self, x):
        a = np.tanh(x @ self.W + self.b)
        dz = 2 * a * (1 - a**2)
        return {"W": x.T @ dz, "b": dz.sum(0)}


@pytest.mark.parametrize("fail", [False, True], ids=["passing", "raising"])
def test_slots_are_perturbed_and_restored(fail):
    layer = SlottedLayer()
    W, b = layer.W, layer.b
    x = RNG.normal(size=(4, 3))

    def grad(m):
        m.loss(x)  # fills the empty slot `cache` and counts
        if fail:
            raise ValueError("shapes")
        return m.grad(x)

    if fail:
        with pytest.raises(jc.UserCodeError, match="shapes"):
            jc.check_object(layer, lambda m: m.loss(x), grad, attributes=("W", "b"))
    else:
        report = jc.check_object(layer, lambda m: m.loss(x), grad, attributes=("W", "b"))
        assert report.ok, str(report)
    assert layer.W is W and layer.b is b and layer._SlottedLayer__calls == 0
    assert not hasattr(layer, "cache")


# --------------------------------------------------------------------------------------------
# Paths into a dict that also holds running statistics
# --------------------------------------------------------------------------------------------


class BatchNormNet:
    def __init__(self, dim=4, seed=5):
        rng = np.random.default_rng(seed)
        self.params = {
            "gamma": 1 + 0.1 * rng.normal(size=dim),
            "beta": 0.1 * rng.normal(size=dim),
            "running_mean": np.zeros(dim),
            "running_var": np.ones(dim),
            "num_batches": 0,
        }

    def loss(self, x, target):
        p = self.params
        mu, var = x.mean(axis=0), x.var(axis=0)
        p["running_mean"] = 0.9 * p["running_mean"] + 0.1 * mu
        p["running_var"] = 0.9 * p["running_var"] + 0.1 * var
        p["num_batches"] += 1
        xhat = (x - mu) / np.sqrt(var + 1e-5)
        out = p["gamma"] * xhat + p["beta"]
        diff = out - target
        loss = 0.5 * np.sum(diff**2)
        return loss, {"gamma": np.sum(diff * xhat, axis=0), "beta": self.dbeta(diff)}

    def dbeta(self, diff):
        return np.sum(diff, axis=0)


class BatchNormMeanBeta(BatchNormNet):
    def dbeta(self, diff):
        return np.mean(diff, axis=0)  # bug: mean where the loss sums


XN, TN = RNG.normal(size=(8, 4)), RNG.normal(size=(8, 4))


def test_paths_into_a_dict_with_running_statistics():
    net = BatchNormNet()
    stats = {k: v.copy() for k, v in net.params.items() if k.startswith("running")}
    paths = ("params/gamma", "params/beta")
    report = jc.check_object(net, lambda m: m.loss(XN, TN), attributes=paths)
    assert report.ok and list(report.leaves) == list(paths), str(report)
    assert net.params["num_batches"] == 0
    assert all(np.array_equal(net.params[k], v) for k, v in stats.items())
    reverse = jc.check_object(net, lambda m: m.loss(XN, TN), attributes=paths[::-1])
    assert list(reverse.leaves) == list(paths[::-1])
    report = jc.check_object(BatchNormMeanBeta(), lambda m: m.loss(XN, TN), attributes=paths)
    assert report.failing == ["params/beta"], str(report)


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ("params/gama", r"obj\.params has no key 'gama'; its keys are \['beta', 'gamma', "),
        ("param/gamma", r"BatchNormNet object has no attribute 'param'"),
        (
            "params/gamma/0",
            r"obj\.params/gamma is a float64 array of shape \(4,\), which holds no '0'; the path "
            r"ends at obj\.params/gamma",
        ),
        ("params//beta", "expected a path into the object"),
        (("params", "params/beta"), "'params/beta', which lies inside 'params'"),
        ("params", r"params leaf 'num_batches' is the Python int 0"),
    ],
    ids=["no-key", "no-attribute", "past-the-end", "empty-part", "nested", "running-stats"],
)
def test_path_errors(attributes, message):
    with pytest.raises(jc.InputError, match=message):
        jc.check_object(BatchNormNet(), lambda m: m.loss(XN, TN), attributes=attributes)


def test_index_errors_name_the_length():
    with pytest.raises(jc.InputError, match=r"obj\.layers is a list of length 3; '7' is not"):
        jc.check_object(LayeredNet(), lambda m: m.loss(XL, YL), attributes="layers/7/W")


class ReadOnlyParams(BatchNormNet):
    """params is a read-only property over self._p; its items can still be set."""

    def __init__(self):
        self._p = BatchNormNet().params

    @property
    def params(self):
        return self._p


def test_paths_through_a_read_only_property():
    net = ReadOnlyParams()
    report = jc.check_object(
        net, lambda m: m.loss(XN, TN), attributes=("params/gamma", "params/beta")
    )
    assert report.ok, str(report)


def test_jax_cost_takes_the_paths_as_keys():
    import jax.numpy as jnp

    def jax_cost(p):
        xhat = (XN - XN.mean(axis=0)) / jnp.sqrt(XN.var(axis=0) + 1e-5)
        return 0.5 * jnp.sum((p["params/gamma"] * xhat + p["params/beta"] - TN) ** 2)

    paths = ("params/gamma", "params/beta")
    report = jc.check_object(
        BatchNormNet(), lambda m: m.loss(XN, TN), attributes=paths, jax_cost=jax_cost
    )
    assert report.ok and report.twin == "given", str(report)


# --------------------------------------------------------------------------------------------
# Layers that accumulate gradients, and a layer that feeds an optimizer
# --------------------------------------------------------------------------------------------


class AccumulatingDense:
    """backward adds into dW and db (as for gradient accumulation over micro-batches)."""

    def __init__(self, n=3, m=2, seed=6):
        rng = np.random.default_rng(seed)
        self.W, self.b = rng.normal(size=(n, m)), rng.normal(size=m)
        self.dW, self.db = np.zeros_like(self.W), np.zeros_like(self.b)

    def forward(self, x):
        self.x = x
        return np.tanh(x @ self.W + self.b)

    def backward(self, dout):
        dz = dout * (1 - self.forward(self.x) ** 2)
        self.dW += self.x.T @ dz
        self.db += self.bias_gradient(dz)
        return dz @ self.W.T

    def bias_gradient(self, dz):
        return dz.sum(axis=0)

    def flush_gradients(self):
        self.dW[...] = 0.0
        self.db[...] = 0.0


class AccumulatingDenseBiasBug(AccumulatingDense):
    def bias_gradient(self, dz):
        return dz.sum(axis=0) * 2  # bug


def _accumulated(layer, x):
    layer.backward(np.ones((len(x), layer.W.shape[1])))
    return layer.dW.copy(), layer.db.copy()


def test_accumulating_layer_with_before_flush():
    x = RNG.normal(size=(5, 3))
    layer = AccumulatingDense()

    def loss(m):
        return np.sum(m.forward(x))

    def grad(m):
        m.forward(x)
        dW, db = _accumulated(m, x)
        return {"W": dW, "b": db}

    before = lambda m: m.flush_gradients()  # noqa: E731
    report = jc.check_object(layer, loss, grad, attributes=("W", "b"), before=before)
    assert report.ok, str(report)
    assert not layer.dW.any() and not hasattr(layer, "x")
    with pytest.raises(jc.NondeterminismError, match=r"before=lambda m: m\.zero_grad\(\)"):
        jc.check_object(layer, loss, grad, attributes=("W", "b"))
    buggy = AccumulatingDenseBiasBug()
    report = jc.check_object(buggy, loss, grad, attributes=("W", "b"), before=before)
    assert report.failing == ["b"], str(report)


def test_before_that_raises_is_the_users_error():
    def before(m):
        raise KeyError("flush")

    with pytest.raises(jc.UserCodeError, match=r"before\(obj\) raised KeyError"):
        jc.check_object(
            Scaled(), lambda n: np.sum(n._w**2), lambda n: 2 * n._w, attributes="_w", before=before
        )


class SGD:
    def __init__(self, lr=0.1):
        self.lr = lr

    def update(self, w, grad):
        w -= self.lr * grad


class OptimizerFedLayer:
    """backward never returns dW: it hands it to the optimizer, which steps in place."""

    def __init__(self, optimizer, seed=7):
        rng = np.random.default_rng(seed)
        self.W, self.b = rng.normal(size=(3, 2)), rng.normal(size=2)
        self.optimizer = optimizer

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.optimizer.update(self.W, self.x.T @ dout)
        self.optimizer.update(self.b, self.bias(dout))
        return dout @ self.W.T

    def bias(self, dout):
        return dout.sum(axis=0)


class Capture:
    """The recipe: an optimizer stand-in that keeps the gradient of each array it is handed."""

    def __init__(self):
        self.grads = {}

    def update(self, w, grad):
        self.grads[id(w)] = np.array(grad, copy=True)

    def of(self, *arrays):
        return tuple(self.grads[id(w)] for w in arrays)


def test_optimizer_fed_layer_with_a_capturing_optimizer():
    x = RNG.normal(size=(4, 3))
    layer, capture = OptimizerFedLayer(SGD()), Capture()
    W = layer.W.copy()

    def loss(m):
        return 0.5 * np.sum(m.forward(x) ** 2)

    def grad(m):
        m.optimizer = capture  # restored afterwards, like every attribute
        m.backward(m.forward(x))
        return capture.of(m.W, m.b)

    report = jc.check_object(layer, loss, grad, attributes=("W", "b"))
    assert report.ok, str(report)
    assert isinstance(layer.optimizer, SGD) and np.array_equal(layer.W, W)

    class BiasBug(OptimizerFedLayer):
        def bias(self, dout):
            return dout.mean(axis=0)  # bug

    report = jc.check_object(BiasBug(SGD()), loss, grad, attributes=("W", "b"))
    assert report.failing == ["b"], str(report)


# --------------------------------------------------------------------------------------------
# The walk: cycles, and large data that is not copied
# --------------------------------------------------------------------------------------------


class Node:
    def __init__(self, parent=None):
        self.parent, self.children = parent, []


def test_cycles_in_the_object_graph():
    net = LayeredNet()
    net.root = Node()
    net.root.children.append(Node(net.root))
    net.root.children[0].net = net  # back to the top
    net.root.children[0].W1 = net.params["W1"]
    report = jc.check_object(net, lambda m: m.loss(XL, YL), attributes="params")
    assert report.ok, str(report)


def test_large_data_is_fingerprinted_not_copied():
    class Holder:
        def __init__(self):
            self.data = np.zeros(snapshot.LARGE // 8 + 1)
            self.small = np.ones(3)

    h = Holder()
    snap = snapshot._Snapshot([h])
    assert [a is h.data for a, _, _ in snap.large] == [True]
    assert all(a is not h.data for a, _ in snap.arrays)
    h.small[0] = 5.0
    h.data[-1] = 1.0
    with pytest.warns(UserWarning, match=r"at data\) in place"):
        snap.restore()
    assert h.small[0] == 1.0


Weights = namedtuple("Weights", ["W", "b"])


class TupleHeldLayer:
    """Keeps its parameters in a namedtuple, and the forward cache in a plain tuple."""

    def __init__(self, seed=9):
        rng = np.random.default_rng(seed)
        self.weights = Weights(rng.normal(size=(3, 2)), np.array([0.2, -0.1]))
        self.cache = (None, self.weights.W.T)  # a transposed view, kept for the forward pass

    def loss(self, x):
        W_T, b = self.cache[1], self.weights.b  # reads W only through the view in the tuple
        self.cache = (x, W_T)
        return np.sum(np.tanh(x @ W_T.T + b))

    def grad(self, x):
        W, b = self.weights
        dz = 1 - np.tanh(x @ W + b) ** 2
        return {"W": x.T @ dz, "b": dz.sum(axis=0)}


def test_parameters_and_views_held_in_tuples():
    x = RNG.normal(size=(4, 3))
    layer = TupleHeldLayer()
    weights, cache = layer.weights, layer.cache
    paths = ("weights/W", "weights/b")
    report = jc.check_object(layer, lambda m: m.loss(x), lambda m: m.grad(x), attributes=paths)
    assert report.ok and list(report.leaves) == list(paths), str(report)
    assert layer.weights is weights and layer.cache is cache


def test_a_deep_chain_of_objects_is_walked_without_recursion():
    net = Scaled()
    node = net
    for _ in range(5_000):
        node.next = Node()
        node = node.next
    node.w = net._w  # far below the walk's depth: not followed, and nothing breaks
    report = jc.check_object(net, lambda n: np.sum(n._w**3), lambda n: 3 * n._w**2, attributes="_w")
    assert report.ok, str(report)
    assert node.w is net._w


# --------------------------------------------------------------------------------------------
# The mapping of views onto a parameter, property by property
# --------------------------------------------------------------------------------------------

VIEWS = {
    "transpose": lambda a: a.T,
    "slice": lambda a: a[1:, ::2],
    "reversed": lambda a: a[::-1, ::-3],
    "reshape": lambda a: a.reshape(-1)[2:14].reshape(3, 4),
    "swap-of-slice": lambda a: a[:, 1:4].swapaxes(0, 1)[::-1],
    "broadcast": lambda a: np.broadcast_to(a[0], (3, a.shape[1])),
    "diagonal": lambda a: np.diagonal(a),
}


# Read-only views (a broadcast, np.diagonal) are checked only from their base here: writing the
# expected base through them is not possible.
CASES = [(name, False) for name in VIEWS] + [
    (name, True) for name in VIEWS if name not in ("broadcast", "diagonal")
]


@pytest.mark.parametrize(
    ("name", "checked_is_view"),
    CASES,
    ids=[f"{n}-{'view' if v else 'base'}-checked" for n, v in CASES],
)
def test_every_view_is_rebuilt_from_the_perturbed_parameter(name, checked_is_view):
    import jax
    import jax.numpy as jnp

    from jaxcheck._engine.system import graph

    make = VIEWS[name]
    base = RNG.normal(size=(5, 6))
    view = make(base)
    holder = type("Holder", (), {})()
    holder.base, holder.view = base, view
    checked, other = ("view", "base") if checked_is_view else ("base", "view")
    ties = graph.ties([(checked, getattr(holder, checked))], graph.walk(holder))
    tie = next(t for t in ties if t.place.path == other)
    delta = RNG.normal(size=getattr(holder, checked).shape)
    moved_base, moved_view = base.copy(), None
    if checked_is_view:
        make(moved_base)[...] = view + delta  # what writing through the view would do
        moved_view = view + delta
        expected, value = moved_base, moved_view
    else:
        moved_base += delta
        expected, value = make(moved_base), moved_base
    got = tie.value([value])
    assert got.shape == expected.shape and np.array_equal(got, expected)
    with jax.enable_x64(True):
        traced = jax.jit(lambda v: tie.value([v]))(jnp.asarray(value))
        assert traced.shape == expected.shape and np.array_equal(np.asarray(traced), expected)


# --------------------------------------------------------------------------------------------
# A parameter held outside the object, by the functions given
# --------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, model):
        self.model = model
        self.params = model.params  # the same dict: updated in place, so read correctly


def test_a_parameter_held_by_the_loss_outside_the_object_is_refused():
    ae = TiedAutoencoder()
    W_dec = ae.W_enc.T.copy()
    stale = ae.W_enc.T  # made before the check, kept in the closure

    def loss(m):
        return 0.5 * np.sum((np.tanh(XA @ m.W_enc + m.b_enc) @ stale + m.b_dec - XA) ** 2) / 5

    with pytest.raises(
        jc.InputError, match=r"loss holds 'stale', which shares memory with .*'W_enc'"
    ):
        jc.check_object(ae, loss, lambda m: m.backward(XA), attributes=TIED)

    def fine(m):  # a copy is data, not the parameter
        return 0.5 * np.sum((np.tanh(XA @ m.W_enc + m.b_enc) @ W_dec + m.b_dec - XA) ** 2) / 5

    report = jc.check_object(
        ae, fine, lambda m: {"W_enc": m.backward(XA)["W_enc"]}, attributes="W_enc"
    )
    assert report.failing == ["W_enc"], str(report)  # backward counts a decoder share fine lacks


def test_a_trainer_holding_the_object_reads_the_perturbed_parameters():
    net = LayeredNet()
    trainer = Trainer(net)
    report = jc.check_object(net, lambda m: trainer.model.loss(XL, YL), attributes="params")
    assert report.ok, str(report)
