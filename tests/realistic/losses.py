"""Classifier losses that return ``(loss, dx)``: vectorized, and the naive loop versions of a
linear classifier that return ``(loss, dW)``."""

import numpy as np


def svm_loss(x, y, forget_n=False):
    """Multiclass SVM loss of scores ``x`` (N, C) for labels ``y`` (N,).

    ``forget_n=True`` plants a bug: ``dx`` not divided by N.
    """
    N = x.shape[0]
    correct_class_scores = x[np.arange(N), y]
    margins = np.maximum(0, x - correct_class_scores[:, np.newaxis] + 1.0)
    margins[np.arange(N), y] = 0
    loss = np.sum(margins) / N
    num_pos = np.sum(margins > 0, axis=1)
    dx = np.zeros_like(x)
    dx[margins > 0] = 1
    dx[np.arange(N), y] -= num_pos
    if not forget_n:
        dx /= N
    return loss, dx


def softmax_loss(x, y, forget_correct_class=False):
    """Softmax cross-entropy of scores ``x`` (N, C) for labels ``y`` (N,).

    ``forget_correct_class=True`` plants a bug: the 1 of the correct class is not subtracted.
    """
    shifted_logits = x - np.max(x, axis=1, keepdims=True)
    Z = np.sum(np.exp(shifted_logits), axis=1, keepdims=True)
    log_probs = shifted_logits - np.log(Z)
    probs = np.exp(log_probs)
    N = x.shape[0]
    loss = -np.sum(log_probs[np.arange(N), y]) / N
    dx = probs.copy()
    if not forget_correct_class:
        dx[np.arange(N), y] -= 1
    dx /= N
    return loss, dx


def svm_loss_naive(W, X, y, reg, reg_factor=2):
    """Structured SVM loss of a linear classifier, with loops. W: (D, C), X: (N, D).

    ``reg_factor=1`` plants a bug: the regulariser's gradient missing its factor 2.
    """
    dW = np.zeros(W.shape)
    num_classes = W.shape[1]
    num_train = X.shape[0]
    loss = 0.0
    for i in range(num_train):
        scores = X[i].dot(W)
        correct_class_score = scores[y[i]]
        for j in range(num_classes):
            if j == y[i]:
                continue
            margin = scores[j] - correct_class_score + 1  # note delta = 1
            if margin > 0:
                loss += margin
                dW[:, j] += X[i]
                dW[:, y[i]] -= X[i]
    loss /= num_train
    dW /= num_train
    loss += reg * np.sum(W * W)
    dW += reg_factor * reg * W
    return loss, dW


def softmax_loss_naive(W, X, y, reg):
    """Softmax loss of a linear classifier, with loops over examples and classes."""
    loss = 0.0
    dW = np.zeros_like(W)
    num_train = X.shape[0]
    num_classes = W.shape[1]
    for i in range(num_train):
        scores = X[i].dot(W)
        scores -= np.max(scores)  # numeric stability
        exp_scores = np.exp(scores)
        probs = exp_scores / np.sum(exp_scores)
        loss += -np.log(probs[y[i]])
        for j in range(num_classes):
            dW[:, j] += (probs[j] - (j == y[i])) * X[i]
    loss /= num_train
    dW /= num_train
    loss += 0.5 * reg * np.sum(W * W)
    dW += reg * W
    return loss, dW


def softmax_loss_vectorized(W, X, y, reg):
    num_train = X.shape[0]
    scores = X.dot(W)
    scores -= scores.max(axis=1, keepdims=True)
    probs = np.exp(scores)
    probs /= np.sum(probs, axis=1, keepdims=True)
    loss = np.sum(-np.log(probs[range(num_train), y])) / num_train
    loss += 0.5 * reg * np.sum(W * W)
    dscores = probs
    dscores[range(num_train), y] -= 1
    dW = X.T.dot(dscores) / num_train + reg * W
    return loss, dW
