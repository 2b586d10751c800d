"""An LSTM cell and a vanilla RNN in the style of course notebooks: the gates read the
concatenation of the previous state and the input, the sigmoid is the numerically stable one
with masked assignment, and the backward passes are written by hand."""

import numpy as np


def sigmoid(x):
    """Stable sigmoid: exp of a non-positive number only."""
    pos = x >= 0
    neg = ~pos
    z = np.zeros_like(x)
    z[pos] = np.exp(-x[pos])
    z[neg] = np.exp(x[neg])
    top = np.ones_like(x)
    top[neg] = z[neg]
    return top / (1 + z)


def lstm_cell_forward(xt, a_prev, c_prev, parameters):
    """One step; returns ``a_next, c_next, cache``."""
    Wf, bf = parameters["Wf"], parameters["bf"]
    Wi, bi = parameters["Wi"], parameters["bi"]
    Wc, bc = parameters["Wc"], parameters["bc"]
    Wo, bo = parameters["Wo"], parameters["bo"]
    concat = np.concatenate((a_prev, xt), axis=0)
    ft = sigmoid(np.dot(Wf, concat) + bf)
    it = sigmoid(np.dot(Wi, concat) + bi)
    cct = np.tanh(np.dot(Wc, concat) + bc)
    c_next = ft * c_prev + it * cct
    ot = sigmoid(np.dot(Wo, concat) + bo)
    a_next = ot * np.tanh(c_next)
    cache = (a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters)
    return a_next, c_next, cache


def lstm_cell_backward(da_next, dc_next, cache, bug=None):
    """Gradients of one step; ``bug`` plants a mistake ("dbi", "da_prev")."""
    a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters = cache
    n_a = a_next.shape[0]
    concat = np.concatenate((a_prev, xt), axis=0)
    tanh_c = np.tanh(c_next)
    dc = dc_next + ot * (1 - tanh_c**2) * da_next
    dot = da_next * tanh_c * ot * (1 - ot)
    dcct = dc * it * (1 - cct**2)
    dit = dc * cct * it * (1 - it)
    dft = dc * c_prev * ft * (1 - ft)
    grads = {
        "Wf": np.dot(dft, concat.T),
        "Wi": np.dot(dit, concat.T),
        "Wc": np.dot(dcct, concat.T),
        "Wo": np.dot(dot, concat.T),
        "bf": np.sum(dft, axis=1, keepdims=True),
        "bi": np.sum(dit if bug != "dbi" else dc * cct, axis=1, keepdims=True),
        "bc": np.sum(dcct, axis=1, keepdims=True),
        "bo": np.sum(dot, axis=1, keepdims=True),
    }
    gates = [("Wf", dft), ("Wi", dit), ("Wc", dcct), ("Wo", dot)]
    if bug == "da_prev":
        gates = gates[:3]  # forgets the output gate's path
    grads["a_prev"] = sum(np.dot(parameters[w][:, :n_a].T, d) for w, d in gates)
    grads["c_prev"] = dc * ft
    grads["xt"] = sum(np.dot(parameters[w][:, n_a:].T, d) for w, d in gates)
    return grads


def rnn_forward(x, a0, parameters):
    """A vanilla RNN over ``x`` of shape (n_x, m, T); returns the states (n_a, m, T) and caches."""
    Wax, Waa, ba = parameters["Wax"], parameters["Waa"], parameters["ba"]
    states, caches = [], []
    a_prev = a0
    for t in range(x.shape[2]):
        a_prev = np.tanh(np.dot(Wax, x[:, :, t]) + np.dot(Waa, a_prev) + ba)
        states.append(a_prev)
        caches.append(a_prev)
    return np.stack(states, axis=2), caches


def rnn_backward(da, x, a0, parameters, caches, bug=False):
    """Backprop through time; ``bug`` forgets the gradient from later steps."""
    Wax, Waa = parameters["Wax"], parameters["Waa"]
    grads = {k: np.zeros_like(v) for k, v in parameters.items()}
    da_prevt = np.zeros_like(a0)
    for t in reversed(range(x.shape[2])):
        a_t = caches[t]
        a_prev = caches[t - 1] if t > 0 else a0
        dz = (da[:, :, t] + (0 if bug else da_prevt)) * (1 - a_t**2)
        grads["Wax"] += np.dot(dz, x[:, :, t].T)
        grads["Waa"] += np.dot(dz, a_prev.T)
        grads["ba"] += np.sum(dz, axis=1, keepdims=True)
        da_prevt = np.dot(Waa.T, dz)
    grads["a0"] = da_prevt
    del Wax
    return grads
