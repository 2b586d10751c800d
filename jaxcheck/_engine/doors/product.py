"""The product doors: a hand-written Hessian-vector (or Gauss-Newton-vector) product, checked
three ways.

The user's ``hvp(params, v)`` is the system under test, compared along seeded directions of
random norms (or along every scaled basis vector: the full Hessian) with the exact product of
the twin, all directions in one program. Finite differences of the twin's gradient are taken
along one random combination ``w`` of the directions, which also tests that the product is
linear, and along every direction only where the user's product and the exact one disagree or
``w`` could not confirm the exact product. :func:`check_product` runs any
:class:`~jaxcheck._engine.evaluate.products.ProductSpec`; :func:`check_hvp` is its front for the
Hessian and the Gauss-Newton matrix.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import jax
import numpy as np

from jaxcheck._engine.doors.door import door, passing
from jaxcheck._engine.doors.product_report import HvpReport, _report, _Tally
from jaxcheck._engine.evaluate.products import (
    SPECS,
    Exact,
    Products,
    ProductSpec,
    gradient_rounding,
    tolerance_floor,
)
from jaxcheck._engine.evaluate.programs import terminal_bar
from jaxcheck._engine.keywords import reject_unknown
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.params import Leaves, match_gradient
from jaxcheck._engine.system.prepare import System, prepare
from jaxcheck._engine.verdict import classify as vd
from jaxcheck._engine.verdict.classify import Opinions, Tolerance
from jaxcheck._engine.verdict.evidence import Rounding, add_double, difference_opinions
from jaxcheck.errors import (
    InputError,
    JaxcheckError,
    NondeterminismError,
    user_code_error,
)

__all__ = [
    "DEFAULT_DIRECTIONS",
    "FULL_HESSIAN_MAX",
    "KINDS",
    "HvpReport",
    "assert_hvp",
    "check_hvp",
    "check_product",
]

#: The products ``hvp`` may compute: the Hessian of the cost, or the Gauss-Newton matrix.
KINDS = tuple(SPECS)
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
#: Random directions have norms log-uniform in [1/NORM_SPREAD, NORM_SPREAD], and basis vectors
#: are scaled by as much (with a random sign): a product that normalises v, or is right only on
#: unit or basis vectors, disagrees with the exact product.
NORM_SPREAD = 4.0


@door("check_hvp")
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
    **unknown: Any,
) -> HvpReport:
    """Checks a hand-written Hessian-vector product three ways and says who is wrong, per leaf.

    ``hvp(params, v)`` (Newton-CG, Gauss-Newton, natural-gradient code) is the system under
    test. Along each direction ``v`` three opinions of ``H v`` meet, entry by entry:

    - **hvp**: the user's product (the "backprop" columns of the table);
    - **exact**: ``jax.jvp(jax.grad(twin), (θ,), (v,))`` (the "autodiff" columns), for every
      direction in one program;
    - **finite differences** of the twin's gradient, ``(∇J(θ + h v) − ∇J(θ − h v)) / 2h``,
      with the rounding error of the gradient differences (∝ u·|∇J|/h) and, from a second step
      2h, the truncation error, the one-sided slopes and kinks of the gradient. They are taken
      along a random combination ``w`` of the directions (one extra call ``hvp(params, w)``,
      which also tests that hvp is linear: ``hvp(params, w)`` must equal the same combination
      of the products), and along every direction where hvp and the exact product disagree
      (or where ``w`` could not confirm the exact product), as :func:`jaxcheck.check` does.

    Directions have random norms, and the full Hessian is taken along randomly scaled basis
    vectors: a product that normalises ``v``, uses ``|v|``, or is right only on unit or basis
    vectors is wrong on them. A product that is not linear in ``v`` fails with a sentence
    saying so (``hvp(params, -2.3·v) ≠ -2.3·hvp(params, v)``).

    The verdict per entry is :func:`jaxcheck.check`'s, and each output leaf gets a status, the
    worst entry and the factor (an ``hvp`` twice too big in ``W2`` says "W2: hvp is 2.00× ...").

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
        directions: as in :func:`jaxcheck.check`, the random directions each leaf is checked
            along (per leaf). One product ``hvp(params, v)`` answers for every leaf at once, so
            the leaves share them: ``k`` directions cost ``k`` calls of ``hvp``, and every
            leaf's ``checked`` is ``k``. ``None``: every basis vector (the full Hessian) for
            models with at most :data:`FULL_HESSIAN_MAX` parameters, else
            :data:`DEFAULT_DIRECTIONS` random directions (seeded); ``"all"``: the full Hessian
            whatever the size (``hvp`` is called once per parameter).
        kind: ``"hessian"`` or ``"gauss_newton"``.
        model_output: with ``kind="gauss_newton"``, the JAX network, ``params -> outputs`` (an
            array or pytree of arrays).
        loss_of_output: with ``kind="gauss_newton"``, the JAX loss, ``outputs -> scalar``.
        eps: the finite-difference step along a unit direction; ``None``: ∛u·max(1, ‖θ⊙v‖).
        rtol: relative tolerance of hvp vs the exact product; ``None``: from the dtype of hvp's
            output and the params (float64: 1e-7, float32: 1e-3).
        batch_size: directions per vmapped batch; ``None``: from ``memory_budget``.
        memory_budget: bytes a batch may use; ``None``: as in :func:`jaxcheck.check`.
        seed: a non-negative integer seeding the random directions, their norms and ``w``.
        progress: show a progress bar over the directions on stderr; ``None``: on a terminal,
            when they take more than one chunk.
        **unknown: none; an unknown option raises an :class:`~jaxcheck.InputError` naming it.

    Returns:
        The :class:`~jaxcheck.HvpReport`: one :class:`~jaxcheck.LeafReport` per output leaf (its
        ``checked`` counts directions), ``method`` ``"full"`` (full Hessian) or
        ``"directional"``.

    Raises:
        InputError: bad params, product or options (the message names the leaf or option).
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
    reject_unknown("check_hvp", unknown, _OPTIONS)
    if not isinstance(kind, str) or kind not in SPECS:
        raise InputError(f"kind={kind!r} is not one of {KINDS}.")
    options = Options(
        eps=eps,
        rtol=rtol,
        batch_size=batch_size,
        memory_budget=memory_budget,
        seed=seed,
        progress=progress,
        twin="required",
    )
    functions = {"model_output": model_output, "loss_of_output": loss_of_output}
    return check_product(SPECS[kind], cost, hvp, params, options, jax_cost, functions, directions)


_OPTIONS = tuple(
    name for name, p in inspect.signature(check_hvp).parameters.items() if p.kind is p.KEYWORD_ONLY
)


@door("assert_hvp", check_hvp)
def assert_hvp(cost: Callable, hvp: Callable, params: Any, **options: Any) -> HvpReport:
    """Like :func:`check_hvp`, but raises :class:`jaxcheck.GradientError` when hvp is wrong.

    Args:
        cost: ``params -> float`` in NumPy.
        hvp: ``(params, v) -> product`` in NumPy.
        params: a pytree of float arrays.
        **options: the keyword options of :func:`check_hvp`.

    Returns:
        The :class:`~jaxcheck.HvpReport` when the product is correct.

    Raises:
        GradientError: an ``AssertionError`` whose message is the report's text; also for an
            inconclusive check, which verifies nothing.
        InputError: an unknown option (named) or bad input, as for :func:`check_hvp`.

    Examples:
        >>> import numpy as np
        >>> import jaxcheck as jc
        >>> params = {"w": np.array([1.0, 2.0])}
        >>> cost = lambda p: float(np.sum(p["w"] ** 3))
        >>> jc.assert_hvp(cost, lambda p, v: {"w": 6 * p["w"] * v["w"]}, params).ok
        True
        >>> try:
        ...     jc.assert_hvp(cost, lambda p, v: {"w": 6 * v["w"]}, params)
        ... except AssertionError as err:
        ...     print(type(err).__name__, err.report.failing)
        GradientError ['w']
    """
    reject_unknown("assert_hvp", options, _OPTIONS)
    return passing(check_hvp(cost, hvp, params, **options))


def check_product(
    spec: ProductSpec,
    cost: Callable,
    product: Callable,
    params: Any,
    options: Options,
    jax_cost: Callable | None = None,
    functions: Mapping[str, Callable | None] | None = None,
    directions: int | str | None = None,
) -> HvpReport:
    """The engine of every product door: ``product(params, v)`` judged against ``spec``'s
    references (see :func:`check_hvp` for the arguments)."""
    start = time.perf_counter()
    if not callable(product):
        raise InputError(
            f"{spec.noun} must be callable (params, v) -> product, got {type(product).__name__}."
        )
    twin_fn, given = _twin_function(spec, jax_cost, functions or {})
    _directions(directions, 0)  # a bad value is told before any user code runs
    system = prepare(cost, None, params, twin_fn, options, gradient=False)
    leaves = system.leaves
    full, count = _directions(directions, leaves.size)
    source = _Directions(leaves, full, count, options.seed)
    user = _Product(product, leaves, spec)
    with jax.enable_x64(True):
        products = Products(
            system,
            spec,
            given,
            count,
            eps=options.eps,
            batch_size=options.batch_size,
            memory_budget=options.memory_budget,
        )
        tallies = [_Tally(v.shape) for v in leaves.values]
        linearity = _Linearity(spec, leaves, source)
        chunks = products.chunks(count)
        bar = _progress(options.progress, count, len(chunks))
        try:
            for rows in chunks:
                _check_chunk(products, tallies, linearity, user, source, rows, options.rtol)
                if bar is not None:
                    bar.update(rows.size)
        finally:
            if bar is not None:
                bar.close()
    return _report(
        system, products.cost_mismatch, tallies, user, source, spec, linearity.findings, start
    )


def _progress(progress: bool | None, count: int, chunks: int) -> Any:
    return terminal_bar(
        progress, count, worth=chunks >= 2, desc="jaxcheck (hvp directions)", unit="dir"
    )


# --------------------------------------------------------------------------- inputs


def _twin_function(
    spec: ProductSpec, jax_cost: Callable | None, functions: Mapping[str, Callable | None]
) -> tuple[Callable | None, dict[str, Callable]]:
    """The twin to prepare, and the JAX functions the specification takes."""
    extra = [name for name, value in functions.items() if value is not None]
    if not spec.functions:
        for name in extra:
            raise InputError(
                f"{name}= only applies to kind='gauss_newton'; for a {spec.title} leave it out "
                f"(the twin is jax_cost, or the port of cost)."
            )
        return jax_cost, {}
    if jax_cost is not None:
        listed = " and ".join(f"{name}=" for name in spec.functions)
        raise InputError(
            f"kind={spec.kind!r} takes the twin as {listed} (the cost is "
            f"loss_of_output(model_output(params))); leave jax_cost= out."
        )
    for name in spec.functions:
        value = functions.get(name)
        if not callable(value):
            raise InputError(
                f"kind={spec.kind!r} needs {name}= as a JAX function (model_output: params -> "
                f"network outputs; loss_of_output: outputs -> scalar loss); got "
                f"{type(value).__name__}."
            )
    given: dict[str, Callable] = {name: cast(Callable, functions[name]) for name in spec.functions}
    if spec.compose is None:
        raise TypeError(f"the {spec.kind} specification lists functions but cannot compose them")
    return spec.compose(given), given


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
    """The directions ``v``: scaled basis vectors, or seeded normal vectors of random norms,
    exact in θ's dtypes; and per chunk the probe ``w``, a random combination of them."""

    def __init__(self, leaves: Leaves, full: bool, count: int, seed: int) -> None:
        self.full, self.count, self.seed = full, count, seed
        self.sizes = [v.size for v in leaves.values]
        self.edges = np.cumsum([0, *self.sizes])
        self.dtypes = [v.dtype for v in leaves.values]
        self.paths = leaves.paths
        self.shapes = [v.shape for v in leaves.values]
        self.scales: np.ndarray | None = None
        if full:  # one seeded draw for every basis vector, whatever the chunks
            rng = np.random.default_rng([seed, 0x5CA1E])
            signs = rng.choice([-1.0, 1.0], count)
            self.scales = signs * NORM_SPREAD ** rng.uniform(-1.0, 1.0, count)

    def exact_in_dtypes(self, v: np.ndarray) -> np.ndarray:
        """``v`` (float64 rows) rounded leaf by leaf to θ's dtypes, back in float64."""
        v = np.array(v, np.float64)
        if all(dtype == np.float64 for dtype in self.dtypes):
            return v
        for i, (a, b) in enumerate(zip(self.edges[:-1], self.edges[1:])):
            v[..., a:b] = v[..., a:b].astype(self.dtypes[i]).astype(np.float64)
        return v

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The float64 directions of ``rows`` (one per row), each representable in θ's dtypes."""
        n = int(self.edges[-1])
        out = np.zeros((rows.size, n))
        if self.scales is not None:
            out[np.arange(rows.size), rows] = self.scales[rows]
            return self.exact_in_dtypes(out)
        for r, k in enumerate(rows):
            rng = np.random.default_rng([self.seed, int(k), 0x4E55])
            norm = NORM_SPREAD ** rng.uniform(-1.0, 1.0)
            v = rng.standard_normal(n)
            out[r] = v * (norm / np.linalg.norm(v))
        return self.exact_in_dtypes(out)

    def combination(self, rows: np.ndarray) -> np.ndarray:
        """Seeded coefficients of the probe ``w = Σ cₖ·vₖ`` over a chunk's directions."""
        rng = np.random.default_rng([self.seed, int(rows[0]), 0x3C0])
        return rng.uniform(0.5, 2.0, rows.size) * rng.choice([-1.0, 1.0], rows.size)

    def scale_factor(self, rows: np.ndarray) -> float:
        """A seeded factor a ≠ ±1 (negative, so that |v| is caught) for the linearity test."""
        rng = np.random.default_rng([self.seed, int(rows[0]), 0x5CA])
        return -float(np.round(rng.uniform(1.3, 3.7), 1))

    def column(self, k: int) -> str:
        """The parameter a basis direction points along, as ``"W2[1, 0]"``."""
        i = int(np.searchsorted(self.edges, k, side="right") - 1)
        index = np.unravel_index(k - int(self.edges[i]), self.shapes[i])
        return f"{self.paths[i]}{list(int(j) for j in index)}"


class _Product:
    """The user's product, called once per direction with read-only params."""

    def __init__(self, product: Callable, leaves: Leaves, spec: ProductSpec) -> None:
        self.product, self.leaves, self.spec = product, leaves, spec
        values = [v.copy() for v in leaves.values]
        for v in values:
            v.flags.writeable = False
        self.params = leaves.unflatten(values)
        self._dtypes: list[np.dtype] | None = None

    def call(self, v: Any) -> list[np.ndarray]:
        subject = self.spec.subject
        try:
            out = self.product(self.params, v)
        except JaxcheckError:
            raise
        except Exception as err:
            hint = None
            if "read-only" in str(err):
                hint = (
                    f"jaxcheck passes params read-only, so that one {self.spec.noun} call cannot "
                    f"change the point of the next: compute into new arrays instead of updating "
                    f"params."
                )
            raise user_code_error(err, subject, hint=hint) from err
        return match_gradient(out, self.leaves, what=subject)

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
            if self._dtypes is None:
                self._check_pure(v, parts)
                self._dtypes = [np.dtype(p.dtype) for p in parts]
            out[r] = np.concatenate([p.reshape(-1) for p in parts])
        return out

    @property
    def dtypes(self) -> list[np.dtype]:
        """The dtypes of the product's leaves, known once it has been called."""
        if self._dtypes is None:
            raise RuntimeError("the product's dtypes are known only after its first call")
        return self._dtypes

    def _check_pure(self, v: Any, parts: list[np.ndarray]) -> None:
        again = self.call(v)
        for path, x, y in zip(self.leaves.paths, parts, again):
            if not np.allclose(x, y, rtol=1e-12, atol=0.0, equal_nan=True):
                raise NondeterminismError(
                    f"{self.spec.subject} returned different values for leaf {path!r} on two "
                    f"calls with the same params and v. A product check needs "
                    f"{self.spec.noun} to be a pure function: freeze any randomness (dropout "
                    f"masks, sampled batches) outside it."
                )


def _rtols(system: System, product: _Product, rtol: float | None) -> np.ndarray:
    """Per leaf, the relative tolerance of hvp vs the exact product, from the dtypes."""
    out = []
    for value, dtype in zip(system.leaves.values, product.dtypes):
        judged = max(np.dtype(dtype), np.dtype(value.dtype), key=vd.epsilon)
        out.append(vd.rtol_for(judged) if rtol is None else float(rtol))
    return np.array(out)


# --------------------------------------------------------------------------- judging


def _check_chunk(
    products: Products,
    tallies: list[_Tally],
    linearity: _Linearity,
    user: _Product,
    source: _Directions,
    rows: np.ndarray,
    rtol: float | None,
) -> None:
    """One chunk: the user's products, the exact ones and the probe ``w`` (one program); finite
    differences along the directions that need them."""
    vectors = source.take(rows)
    bp = user.along(vectors)
    rtols = _rtols(products.system, user, rtol)
    coefficients = source.combination(rows)
    w = source.exact_in_dtypes(coefficients @ vectors)
    bp_w = user.along(w[None])[0]
    steps, h_w = products.steps(vectors), float(products.steps(w[None])[0])
    exact = products.exact(vectors, w, h_w)
    edges, owner = products.edges, products.owner
    floor = _per_leaf(np.abs(exact.g0)[None], edges)[:, 0]
    scale = _per_leaf(np.nan_to_num(np.abs(exact.products), nan=0.0, posinf=0.0), edges)
    atol, _ = tolerance_floor(rtols, scale, floor, steps)
    excess = vd.tolerance_excess(bp, exact.products, rtols[owner], atol.T[:, owner])
    linearity.check(user, rows, vectors, bp, coefficients, bp_w, rtols, atol, edges)
    need = np.zeros(rows.size, bool)
    if products.has_finite_differences:
        clean = _probe_w(tallies, exact, bp_w, h_w, rtols, floor, edges)
        need = np.any(excess > 0, axis=1) | (not clean)
    keep = ~need
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        tallies[i].add_exact(
            rows[keep],
            bp[keep, a:b],
            exact.products[keep, a:b],
            excess[keep, a:b],
            steps[keep],
            float(rtols[i]),
        )
    if need.any():
        _judge_chunk(
            products, tallies, rows[need], vectors[need], bp[need], exact.products[need], rtols
        )


def _per_leaf(x: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    """(rows, N) → (leaves, rows): the largest entry of each leaf (0 for an empty leaf)."""
    return np.stack([np.max(x[:, a:b], axis=1, initial=0.0) for a, b in zip(edges, edges[1:])])


def _probe_w(
    tallies: list[_Tally],
    exact: Exact,
    bp_w: np.ndarray,
    h_w: float,
    rtols: np.ndarray,
    floor: np.ndarray,
    edges: Sequence[int],
) -> bool:
    """Whether finite differences along ``w`` confirm the exact product there; adds the probe's
    finite differences and the kinks it crossed to the leaves.

    The exact product is judged as if it were the user's: every entry ``ok``, or ``kink``
    (the gradient's one-sided slopes along ``w`` differ and the exact product lies between
    them: finite differences along the directions themselves could not confirm more). Where
    they stray from it beyond their error (``fd-unreliable``: a wrong twin, or a step too large
    or too small), every direction of the chunk gets finite differences of its own.
    """
    if exact.displaced_w is None:
        return False
    up, down, up2, down2 = exact.displaced_w
    clean = True
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        n, ad = b - a, exact.along_w[a:b]
        h = np.full(n, h_w)
        g0, rounding = exact.g0[a:b], _rounding(float(floor[i]))
        op = difference_opinions(ad, ad, up[a:b], down[a:b], h, h, g0, rounding)
        add_double(
            op, difference_opinions(ad, ad, up2[a:b], down2[a:b], 2 * h, 2 * h, g0, rounding)
        )
        scale = float(np.max(np.abs(ad), initial=0.0)) if np.all(np.isfinite(ad)) else 0.0
        atol, fd_atol = tolerance_floor(
            rtols[i : i + 1], np.array([[scale]]), floor[i : i + 1], np.array([h_w])
        )
        tol = Tolerance(float(rtols[i]), float(atol[0, 0]), vd.FD_RTOL, float(fd_atol[0, 0]), scale)
        classes = vd.classify(op, tol)
        clean &= bool(np.all((classes == vd.OK) | (classes == vd.KINK)))
        kinks = np.flatnonzero(classes == vd.KINK)
        tallies[i].add_probe(bp_w[a:b], ad, op.finite, op.error, kinks)
    return clean


class _Linearity:
    """Tests that the user's product is linear in ``v``: ``product(params, w)`` against the same
    combination of the products along the chunk's directions, and, where that fails, against
    ``a·product(params, v)`` along ``a·v`` to say whether homogeneity or additivity broke.

    The tolerance is the dtype's rtol of each product's size: each product may differ from the
    exact one by that much, so their combination may differ from another by as much.
    """

    def __init__(self, spec: ProductSpec, leaves: Leaves, source: _Directions) -> None:
        self.spec, self.leaves, self.source = spec, leaves, source
        #: per leaf path, the clause saying how the product is not linear ("hvp is not ...").
        self.findings: dict[str, str] = {}

    def check(
        self,
        user: _Product,
        rows: np.ndarray,
        vectors: np.ndarray,
        bp: np.ndarray,
        coefficients: np.ndarray,
        bp_w: np.ndarray,
        rtols: np.ndarray,
        atol: np.ndarray,
        edges: Sequence[int],
    ) -> None:
        combination = coefficients @ bp
        sizes = np.abs(coefficients) @ np.abs(bp)
        failed = self._failing(
            bp_w, combination, sizes, 1 + np.sum(np.abs(coefficients)), rtols, atol, edges
        )
        if not failed:
            return
        a = self.source.scale_factor(rows)
        scaled = self.source.exact_in_dtypes(a * vectors[0])
        bp_a = user.along(scaled[None])[0]
        homogeneous = self._failing(
            bp_a, a * bp[0], np.abs(a * bp[0]), 1 + abs(a), rtols, atol, edges
        )
        for i, at in failed.items():
            path = self.leaves.paths[i]
            if path in self.findings:
                continue
            if i in homogeneous:
                j = homogeneous[i]
                got, want = self.spec.call(f"{a:g}·v"), f"{a:g}·{self.spec.subject}"
                values = (bp_a[edges[i] + j], a * bp[0, edges[i] + j])
            else:
                j = at
                got = self.spec.call("Σ cₖ·vₖ")
                want = f"Σ cₖ·{self.spec.call('vₖ')}"
                values = (bp_w[edges[i] + j], combination[edges[i] + j])
            kind = "linear" if i in homogeneous else "additive"
            index = list(int(k) for k in np.unravel_index(j, self.leaves.values[i].shape))
            self.findings[path] = (
                f"{self.spec.noun} is not {kind} in v: {got} ≠ {want} (at {index}: "
                f"{values[0]:.6g} against {values[1]:.6g}); the true product is linear in v."
            )

    @staticmethod
    def _failing(
        got: np.ndarray,
        want: np.ndarray,
        sizes: np.ndarray,
        weight: float,
        rtols: np.ndarray,
        atol: np.ndarray,
        edges: Sequence[int],
    ) -> dict[int, int]:
        """Per leaf where ``got`` is not ``want`` within the tolerance, the flat index of its
        worst entry."""
        out = {}
        for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            slack = weight * float(np.max(atol[i], initial=0.0))
            over = vd.tolerance_excess(
                got[a:b], want[a:b], 0.0, rtols[i] * (np.abs(got[a:b]) + sizes[a:b]) + slack
            )
            # Where the combination itself is not finite (hvp gave NaN or inf along some
            # direction), the entry is already wrong on its own and says nothing of linearity.
            over = np.where(np.isfinite(want[a:b]), over, -np.inf)
            if over.size and np.max(over) > 0:
                out[i] = int(np.argmax(over))
        return out


def _judge_chunk(
    products: Products,
    tallies: list[_Tally],
    rows: np.ndarray,
    vectors: np.ndarray,
    user: np.ndarray,
    exact: np.ndarray,
    rtols: np.ndarray,
) -> None:
    """Judges directions with finite differences: the screen's sums for every entry, one by one
    for the flagged ones.

    Flagged entries (at most :data:`MAX_JUDGED` per leaf, those furthest from the exact product
    first) get :func:`jaxcheck._engine.verdict.classify.classify`, with the gradient at ±2h for
    their directions; any others are counted by the user's product against the exact one alone.
    """
    steps = products.steps(vectors)
    chunk = products.evaluate(vectors, steps, user, exact, rtols)
    edges = products.edges
    picks = []
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        n = b - a
        flat = np.flatnonzero(chunk.flagged[:, a:b])
        if flat.size > MAX_JUDGED:
            r, j = np.divmod(flat, n)
            excess = vd.tolerance_excess(
                user[r, a + j], chunk.exact[r, a + j], rtols[i], chunk.atol[i, r]
            )
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
        h, rounding = steps[r], _rounding(float(chunk.floor[i]))
        op = difference_opinions(
            user[r, a + j],
            chunk.exact[r, a + j],
            chunk.up[r, a + j],
            chunk.down[r, a + j],
            h,
            h,
            chunk.g0[a + j],
            rounding,
        )
        if up2 is not None and down2 is not None:
            at = r if refined is None else refined[r]
            has = at >= 0
            sub = _take(op, has)
            h2 = 2 * steps[r[has]]
            up_2h, down_2h = up2[at[has], a + j[has]], down2[at[has], a + j[has]]
            g0 = chunk.g0[a + j[has]]
            double = difference_opinions(
                sub.backprop, sub.autodiff, up_2h, down_2h, h2, h2, g0, rounding
            )
            add_double(sub, double)
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


def _rounding(floor: float) -> Rounding:
    """How gradient entries round: relative to their leaf's largest entry ``floor`` at least."""
    return lambda up, down, h_total: gradient_rounding(up, down, floor, h_total)


def _take(op: Opinions, mask: np.ndarray) -> Opinions:
    return Opinions(*(getattr(op, f.name)[mask] for f in dataclasses.fields(Opinions)))


def _put(op: Opinions, sub: Opinions, mask: np.ndarray) -> None:
    for name in ("error", "kink", "slope_error"):
        getattr(op, name)[mask] = getattr(sub, name)
