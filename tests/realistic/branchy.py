"""Losses with Python branches and masked selections on values computed from the parameters,
written as in from-scratch notebooks: ``if r >= 0`` per example, ``r[small]`` sums."""

import numpy as np


def abs_loss(w, X, y, bug=False):
    """Mean absolute error of a linear model, with ``if``/``else`` per example."""
    loss = 0.0
    dw = np.zeros_like(w)
    for i in range(X.shape[0]):
        r = X[i] @ w - y[i]
        if r >= 0:
            loss += r
            dw += X[i]
        else:
            loss -= r
            dw += X[i] if bug else -X[i]
    return loss / X.shape[0], dw / X.shape[0]


def hinge_loss(w, X, y, reg):
    """Binary hinge loss (labels ±1) with an ``if`` per example and an ``elif``."""
    loss = 0.5 * reg * np.sum(w * w)
    dw = reg * w
    for i in range(X.shape[0]):
        margin = 1 - y[i] * np.dot(X[i], w)
        if margin > 1:
            loss += margin
            dw[:] = dw - y[i] * X[i]
        elif margin > 0:
            loss += margin
            dw -= y[i] * X[i]
    return loss, dw


def huber_loss(w, X, y, delta=1.0, bug=False):
    """Huber loss with masked sums of the residuals."""
    r = X @ w - y
    small = np.abs(r) <= delta
    loss = 0.5 * np.sum(r[small] ** 2) + delta * np.sum(np.abs(r[~small]) - 0.5 * delta)
    loss += 0.1 * r[r > 0].sum() + np.mean(r[r < 0] ** 2) + np.max(r[small])
    dr = np.where(small, r, delta * np.sign(r))
    dr = dr + 0.1 * (r > 0) + 2 * np.where(r < 0, r, 0) / np.sum(r < 0)
    top = np.where(small, r, -np.inf)
    dr = dr + (top == np.max(top))
    if bug:
        dr = np.where(small, r, delta)
    return loss, X.T @ dr


def entropy(w, bug=False):
    """Entropy of normalised ReLU weights; ``p = 0`` entries are skipped by an ``if``."""
    q = np.maximum(w, 0)
    total = np.sum(q)
    p = q / total
    h = 0.0
    dp = np.zeros_like(p)
    for i in range(p.shape[0]):
        if p[i] > 0:
            h -= p[i] * np.log(p[i])
            dp[i] = -(np.log(p[i]) + 1)
    # through p = q / total, then q = max(w, 0)
    dq = (dp - np.sum(dp * p)) / total
    if bug:
        dq = dp / total
    return h, dq * (w > 0)
