"""Checks a hand-written Hessian-vector (or Gauss-Newton-vector) product three ways.

The user's ``hvp(params, v)`` is the system under test, compared along seeded directions (or
along every basis vector: the full Hessian) with the exact product and with finite differences
of the twin's gradient, both vmapped over all directions at once under ``jit``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxcheck._engine.doors.product_report import HvpReport, _report, _Tally
from jaxcheck._engine.evaluate.products import Products, rounding
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.params import Leaves, match_gradient
from jaxcheck._engine.system.prepare import System, prepare
from jaxcheck._engine.verdict import classify as vd
from jaxcheck._engine.verdict.classify import Opinions, Tolerance
from jaxcheck.errors import InputError, JaxcheckError, NondeterminismError, user_code_error
from jaxcheck.report import Report

__all__ = ["DEFAULT_DIRECTIONS", "FULL_HESSIAN_MAX", "KINDS", "HvpReport", "check_hvp"]

#: The products ``hvp`` may compute: the Hessian of the cost, or the Gauss-Newton matrix.
KINDS = ("hessian", "gauss_newton")
#: Random directions when the model is too large for the full Hessian and none are asked for.
DEFAULT_DIRECTIONS = 16
#: Models with at most this many parameters are checked along every basis vector (the full
#: Hessian) by default. Measured on a busy two-core CPU, after compilation: 0.02 s for a
#: 47-parameter ReLU MLP, 0.2 s for 321 parameters, 2-3 s for 1,217; above it, random
#: directions say as much about a wrong block for a fraction of the time.
FULL_HESSIAN_MAX = 1024
#: Flagged entries per leaf and chunk judged one by one, those furthest from the exact product
#: first; any others are counted by hvp against the exact product alone.
MAX_JUDGED = 65536
#: Directions per chunk re-evaluated at ±2h for their flagged entries.
MAX_REFINED = 1024

_CALL = "hvp(params, v)"


def check_hvp(
    cost: Callable,
    hvp: Callable,
    params: Any,
    *,
    jax_cost: Callable | None = None,
    directions: int | str | None = None,
    kind: str = "hessian",
    model_output: Callable | None = None,
    loss_of_output: Callable | None = None,
    eps: float | None = None,
    rtol: float | None = None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> Report:
    """Checks a hand-written Hessian-vector product three ways and says who is wrong, per leaf.

    ``hvp(params, v)`` (Newton-CG, Gauss-Newton, natural-gradient code) is the system under
    test. Along each direction ``v`` three opinions of ``H v`` meet, entry by entry:

    - **hvp**: the user's product (the "backprop" columns of the table);
    - **exact**: ``jax.jvp(jax.grad(twin), (θ,), (v,))`` (the "autodiff" columns);
    - **finite differences** of the twin's gradient, ``(∇J(θ + h v) − ∇J(θ − h v)) / 2h``,
      with the rounding error of the gradient differences (∝ u·|∇J|/h) and, from a second step
      2h, the truncation error, the one-sided slopes and kinks of the gradient.

    Both JAX opinions are vmapped over all directions at once under ``jit``, in float64. The
    verdict per entry is :func:`jaxcheck.check`'s, and each output leaf gets a status, the worst
    entry and the factor (an ``hvp`` twice too big in ``W2`` says "W2: hvp is 2.00× ...").

    With ``kind="gauss_newton"`` the product is ``Jᵀ H_L J v``: ``J`` is the Jacobian of
    ``model_output`` (params → network outputs) and ``H_L`` the Hessian of ``loss_of_output``
    (outputs → scalar loss), and the cost is ``loss_of_output(model_output(params))``. The exact
    opinion is computed with ``jax.linearize`` and ``jax.vjp``; finite differences are those of
    the linearised network's gradient ``Jᵀ ∇L(f(θ) + J (θ' − θ))``, which check the loss's
    curvature (``J`` comes from autodiff in both).

    Args:
        cost: ``params -> float`` in NumPy (or a tuple led by the float), as for
            :func:`jaxcheck.check`; its twin must compute it.
        hvp: ``(params, v) -> product``, shaped like params (or a dict keyed ``"d" + name``).
            ``v`` is shaped like params, in the params' dtypes; ``params`` is passed read-only.
        params: a pytree of floating-point NumPy arrays.
        jax_cost: the JAX twin of ``cost``; ``None`` ports ``cost`` with :func:`jaxcheck.port`.
            Not used with ``kind="gauss_newton"``.
        directions: ``None``: every basis vector (the full Hessian) for models with at most
            :data:`FULL_HESSIAN_MAX` parameters, else :data:`DEFAULT_DIRECTIONS` random unit
            directions; an int: that many random unit directions (seeded); ``"all"``: the full
            Hessian whatever the size (``hvp`` is called once per parameter).
        kind: ``"hessian"`` or ``"gauss_newton"``.
        model_output: with ``kind="gauss_newton"``, the JAX network, ``params -> outputs`` (an
            array or pytree of arrays).
        loss_of_output: with ``kind="gauss_newton"``, the JAX loss, ``outputs -> scalar``.
        eps: the finite-difference step along a unit direction; ``None``: ∛u·max(1, ‖θ⊙v‖).
        rtol: relative tolerance of hvp vs the exact product; ``None``: from the dtype of hvp's
            output and the params (float64: 1e-7, float32: 1e-3).
        batch_size: directions per vmapped batch; ``None``: from ``memory_budget``.
        memory_budget: bytes a batch may use; ``None``: as in :func:`jaxcheck.check`.
        seed: a non-negative integer seeding the random directions.
        progress: show a progress bar over the directions on stderr; ``None``: on a terminal,
            when they take more than one chunk.

    Returns:
        The :class:`~jaxcheck.Report`: one :class:`~jaxcheck.LeafReport` per output leaf (its
        ``checked`` counts directions), ``method`` ``"full"`` (full Hessian) or
        ``"directional"``.

    Raises:
        InputError: bad params, product or options (the message names the leaf).
        UserCodeError: cost, hvp or a JAX function raised.
        NondeterminismError: cost or hvp give different values for the same input.
        ReimplementationError: the twin's cost differs from the NumPy cost at θ.
        PortError: ``cost`` cannot be ported and no ``jax_cost`` is given.

    Examples:
        >>> import numpy as np
        >>> import jaxcheck as jc
        >>> X = np.array([[1.0, 2.0], [3.0, -1.0]])
        >>> params = {"w": np.array([0.5, -0.25])}
        >>> cost = lambda p: float(np.sum(np.tanh(X @ p["w"]) ** 2))
        >>> def hvp(p, v):
        ...     t = np.tanh(X @ p["w"])
        ...     curvature = 2 * (1 - t**2) * (1 - 3 * t**2)  # d²(tanh²)/dz²
        ...     return {"w": X.T @ (curvature * (X @ v["w"]))}
        >>> jc.check_hvp(cost, hvp, params).ok
        True
        >>> report = jc.check_hvp(cost, lambda p, v: {"w": 2 * hvp(p, v)["w"]}, params)
        >>> report.failing, round(report.leaves["w"].factor, 2)
        (['w'], 2.0)
    """
    start = time.perf_counter()
    if not callable(hvp):
        raise InputError(f"hvp must be callable (params, v) -> product, got {type(hvp).__name__}.")
    twin_fn = _twin_function(kind, jax_cost, model_output, loss_of_output)
    _directions(directions, 0)  # a bad value is told before any user code runs
    options = Options(
        eps=eps,
        rtol=rtol,
        batch_size=batch_size,
        memory_budget=memory_budget,
        seed=seed,
        progress=progress,
        twin="required",
    )
    system = prepare(cost, None, params, twin_fn, options, gradient=False)
    leaves = system.leaves
    full, count = _directions(directions, leaves.size)
    source = _Directions(leaves, full, count, options.seed)
    product = _Product(hvp, leaves)
    with jax.enable_x64(True):
        products = Products(
            system,
            kind,
            model_output,
            loss_of_output,
            count,
            eps=options.eps,
            batch_size=options.batch_size,
            memory_budget=options.memory_budget,
        )
        tallies = [_Tally(v.shape) for v in leaves.values]
        chunks = products.chunks(count)
        bar = _progress(options.progress, count, len(chunks))
        try:
            for rows in chunks:
                vectors = source.take(rows)
                user = product.along(vectors)
                rtols = _rtols(system, product, options.rtol)
                _judge_chunk(products, tallies, rows, vectors, user, rtols)
                if bar is not None:
                    bar.update(rows.size)
        finally:
            if bar is not None:
                bar.close()
    return _report(system, products.cost_mismatch, tallies, product, source, kind, start)


def _progress(progress: bool | None, count: int, chunks: int) -> Any:
    if progress is False or (progress is None and (chunks < 2 or not sys.stderr.isatty())):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=count, desc="jaxcheck (hvp directions)", unit="dir", file=sys.stderr)


# --------------------------------------------------------------------------- inputs


def _twin_function(
    kind: str,
    jax_cost: Callable | None,
    model_output: Callable | None,
    loss_of_output: Callable | None,
) -> Callable | None:
    if not isinstance(kind, str) or kind not in KINDS:
        raise InputError(f"kind={kind!r} is not one of {KINDS}.")
    if kind == "hessian":
        for name, value in (("model_output", model_output), ("loss_of_output", loss_of_output)):
            if value is not None:
                raise InputError(
                    f"{name}= only applies to kind='gauss_newton'; for a Hessian-vector product "
                    f"leave it out (the twin is jax_cost, or the port of cost)."
                )
        return jax_cost
    if jax_cost is not None:
        raise InputError(
            "kind='gauss_newton' takes the twin as model_output= and loss_of_output= (the cost "
            "is loss_of_output(model_output(params))); leave jax_cost= out."
        )
    for name, value in (("model_output", model_output), ("loss_of_output", loss_of_output)):
        if not callable(value):
            raise InputError(
                f"kind='gauss_newton' needs {name}= as a JAX function (model_output: params -> "
                f"network outputs; loss_of_output: outputs -> scalar loss); got "
                f"{type(value).__name__}."
            )

    def twin(params: Any) -> Any:
        return loss_of_output(model_output(params))

    return twin


def _directions(directions: int | str | None, size: int) -> tuple[bool, int]:
    """(full Hessian?, number of directions)."""
    if directions is None:
        return (True, size) if size <= FULL_HESSIAN_MAX else (False, DEFAULT_DIRECTIONS)
    if isinstance(directions, str):
        if directions != "all":
            raise InputError(
                f"directions={directions!r}: expected a positive int, 'all' (the full Hessian) "
                f"or None."
            )
        return True, size
    if isinstance(directions, (bool, np.bool_)) or not isinstance(directions, (int, np.integer)):
        raise InputError(f"directions={directions!r}: expected a positive int, 'all' or None.")
    if directions < 1:
        raise InputError(f"directions={directions!r}: expected a positive int, 'all' or None.")
    return False, int(directions)


class _Directions:
    """The unit directions ``v``: basis vectors, or seeded normal vectors, exact in θ's dtypes."""

    def __init__(self, leaves: Leaves, full: bool, count: int, seed: int) -> None:
        self.full, self.count, self.seed = full, count, seed
        self.sizes = [v.size for v in leaves.values]
        self.edges = np.cumsum([0, *self.sizes])
        self.dtypes = [v.dtype for v in leaves.values]
        self.paths = leaves.paths
        self.shapes = [v.shape for v in leaves.values]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The float64 directions of ``rows`` (one per row), each representable in θ's dtypes."""
        n = int(self.edges[-1])
        out = np.zeros((rows.size, n))
        for r, k in enumerate(rows):
            if self.full:
                out[r, k] = 1.0
                continue
            v = np.random.default_rng([self.seed, int(k), 0x4E55]).standard_normal(n)
            v /= np.linalg.norm(v)
            for i, (a, b) in enumerate(zip(self.edges[:-1], self.edges[1:])):
                v[a:b] = v[a:b].astype(self.dtypes[i]).astype(np.float64)
            out[r] = v
        return out

    def column(self, k: int) -> str:
        """The parameter a basis direction points along, as ``"W2[1, 0]"``."""
        i = int(np.searchsorted(self.edges, k, side="right") - 1)
        index = np.unravel_index(k - int(self.edges[i]), self.shapes[i])
        return f"{self.paths[i]}{list(int(j) for j in index)}"


class _Product:
    """The user's ``hvp``, called once per direction with read-only params."""

    def __init__(self, hvp: Callable, leaves: Leaves) -> None:
        self.hvp, self.leaves = hvp, leaves
        values = [v.copy() for v in leaves.values]
        for v in values:
            v.flags.writeable = False
        self.params = leaves.unflatten(values)
        self.dtypes: list[np.dtype] | None = None

    def call(self, v: Any) -> list[np.ndarray]:
        try:
            out = self.hvp(self.params, v)
        except JaxcheckError:
            raise
        except Exception as err:
            hint = None
            if "read-only" in str(err):
                hint = (
                    "jaxcheck passes params read-only, so that one hvp call cannot change the "
                    "point of the next: compute into new arrays instead of updating params."
                )
            raise user_code_error(err, _CALL, hint=hint) from err
        try:
            return match_gradient(out, self.leaves)
        except InputError as err:
            raise InputError(str(err).replace("grad(params)", _CALL)) from None

    def along(self, vectors: np.ndarray) -> np.ndarray:
        """The user's products along ``vectors`` as float64 rows (one per direction)."""
        leaves = self.leaves
        edges = np.cumsum([0, *[v.size for v in leaves.values]])
        out = np.empty_like(vectors)
        for r in range(vectors.shape[0]):
            v = leaves.unflatten(
                [
                    vectors[r, a:b].astype(leaf.dtype).reshape(leaf.shape)
                    for a, b, leaf in zip(edges[:-1], edges[1:], leaves.values)
                ]
            )
            parts = self.call(v)
            if self.dtypes is None:
                again = self.call(v)
                for path, x, y in zip(leaves.paths, parts, again):
                    if not np.allclose(x, y, rtol=1e-12, atol=0.0, equal_nan=True):
                        raise NondeterminismError(
                            f"hvp(params, v) returned different values for leaf {path!r} on two "
                            f"calls with the same params and v. A product check needs hvp to be "
                            f"a pure function: freeze any randomness (dropout masks, sampled "
                            f"batches) outside it."
                        )
                self.dtypes = [np.dtype(p.dtype) for p in parts]
            out[r] = np.concatenate([p.reshape(-1) for p in parts])
        return out


def _rtols(system: System, product: _Product, rtol: float | None) -> np.ndarray:
    """Per leaf, the relative tolerance of hvp vs the exact product, from the dtypes."""
    out = []
    for value, dtype in zip(system.leaves.values, product.dtypes):
        judged = max(np.dtype(dtype), np.dtype(value.dtype), key=vd.epsilon)
        out.append(vd.rtol_for(judged) if rtol is None else float(rtol))
    return np.array(out)


# --------------------------------------------------------------------------- judging


def _judge_chunk(
    products: Products,
    tallies: list[_Tally],
    rows: np.ndarray,
    vectors: np.ndarray,
    user: np.ndarray,
    rtols: np.ndarray,
) -> None:
    """Judges one chunk: the screen's sums for every entry, one by one for the flagged ones.

    Flagged entries (at most :data:`MAX_JUDGED` per leaf, those furthest from the exact product
    first) get :func:`jaxcheck._engine.verdict.classify.classify`, with the gradient at ±2h for their
    directions; any others are counted by the user's product against the exact one alone.
    """
    steps = products.steps(vectors)
    chunk = products.evaluate(vectors, steps, user, rtols)
    edges = products.edges
    picks = []
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        n = b - a
        flat = np.flatnonzero(chunk.flagged[:, a:b])
        if flat.size > MAX_JUDGED:
            r, j = np.divmod(flat, n)
            bp, ad = user[r, a + j], chunk.exact[r, a + j]
            with np.errstate(invalid="ignore", over="ignore"):
                excess = np.abs(bp - ad) - (rtols[i] * (np.abs(bp) + np.abs(ad)) + chunk.atol[i, r])
            excess = np.nan_to_num(excess, nan=np.inf)
            flat = np.sort(flat[np.argsort(-excess, kind="stable")[:MAX_JUDGED]])
        picks.append(flat)
    up2, down2, refined = chunk.up2, chunk.down2, None
    if up2 is None:
        wanted = np.unique(np.concatenate([p // (b - a) for p, a, b in _spans(picks, edges)]))
        if wanted.size > MAX_REFINED:
            wanted = wanted[:MAX_REFINED]
        if wanted.size:
            up2, down2 = products.doubled(vectors[wanted], steps[wanted])
            refined = np.full(vectors.shape[0], -1)
            refined[wanted] = np.arange(wanted.size)
    for i, (flat, a, b) in enumerate(_spans(picks, edges)):
        n = b - a
        r, j = np.divmod(flat, n)
        op = _opinions(
            user[r, a + j],
            chunk.exact[r, a + j],
            chunk.up[r, a + j],
            chunk.down[r, a + j],
            chunk.g0[a + j],
            steps[r],
            float(chunk.floor[i]),
        )
        if up2 is not None:
            at = r if refined is None else refined[r]
            has = at >= 0
            sub = _take(op, has)
            _add_double(
                sub,
                up2[at[has], a + j[has]],
                down2[at[has], a + j[has]],
                chunk.g0[a + j[has]],
                steps[r[has]],
                float(chunk.floor[i]),
            )
            _put(op, sub, has)
        tol = Tolerance(
            rtol=float(rtols[i]),
            atol=chunk.atol[i, r],
            fd_rtol=vd.FD_RTOL,
            fd_atol=chunk.fd_atol[i, r],
            scale=chunk.scale[i, r],
        )
        classes = vd.classify(op, tol) if flat.size else np.zeros(0, np.int8)
        disagree = int(np.sum(~vd.backprop_agrees(op.backprop, op.autodiff, tol)))
        tallies[i].add(chunk, i, rows, n, classes, disagree, op.kink, j, steps, float(rtols[i]))


def _spans(picks: list[np.ndarray], edges: Sequence[int]) -> list[tuple[np.ndarray, int, int]]:
    return [(p, int(a), int(b)) for p, a, b in zip(picks, edges[:-1], edges[1:])]


def _opinions(
    bp: np.ndarray,
    ad: np.ndarray,
    up: np.ndarray,
    down: np.ndarray,
    g0: np.ndarray,
    h: np.ndarray,
    floor: float,
) -> Opinions:
    """The opinions on some entries from the gradient at θ ± h·v (rounding error only)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        finite = (up - down) / (2 * h)
        slope_up = (up - g0) / h
        slope_down = (g0 - down) / h
    error = rounding(up, down, floor, 2 * h)
    return Opinions(
        bp,
        ad,
        finite,
        slope_up,
        slope_down,
        error.copy(),
        error,
        4 * error,
        np.zeros(bp.size, bool),
    )


def _add_double(
    op: Opinions,
    up2: np.ndarray,
    down2: np.ndarray,
    g0: np.ndarray,
    h: np.ndarray,
    floor: float,
) -> None:
    """Truncation error, the one-sided slopes at 2h and kinks of the gradient (in place)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        finite_2h = (up2 - down2) / (4 * h)
        slope_up_2h = (up2 - g0) / (2 * h)
        slope_down_2h = (g0 - down2) / (2 * h)
        truncation = np.abs(finite_2h - op.finite) / 3
    rounding_2h = rounding(up2, down2, floor, 4 * h)
    op.error = op.rounding + truncation + rounding_2h
    # Where the gradient has a kink (ReLU², max) or a jump (ReLU, abs) within θ ± 2h·v, the gap
    # between the one-sided slopes does not grow with the step as it does where it is smooth.
    op.kink = vd.kinks(op.slope_up, op.slope_down, slope_up_2h, slope_down_2h, op.rounding)
    op.slope_error = (
        np.maximum(np.abs(slope_up_2h - op.slope_up), np.abs(slope_down_2h - op.slope_down))
        + 4 * op.rounding
        + 2 * rounding_2h
    )


def _take(op: Opinions, mask: np.ndarray) -> Opinions:
    return Opinions(*(getattr(op, f.name)[mask] for f in dataclasses.fields(Opinions)))


def _put(op: Opinions, sub: Opinions, mask: np.ndarray) -> None:
    for name in ("error", "kink", "slope_error"):
        getattr(op, name)[mask] = getattr(sub, name)
