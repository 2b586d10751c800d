"""The compiled side of :func:`jaxcheck.check_hvp`: gradients at θ ± s·h·v and exact products,
vmapped over a chunk of directions, and a first screening of every entry on the device.

Only entries the screen cannot call correct come back to the host to be judged one by one
(:mod:`jaxcheck._engine.doors.product`), so a full Hessian of tens of thousands of parameters costs a few
reductions per entry, not a pass of NumPy code.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck._engine.evaluate.finite_differences import default_memory_budget
from jaxcheck._engine.evaluate.programs import FAST_COMPILE_OPTIONS
from jaxcheck._engine.system.prepare import System, check_twin
from jaxcheck._engine.system.twin import Twin, cost_and_terms
from jaxcheck._engine.verdict import classify as vd
from jaxcheck.errors import InputError, JaxcheckError

__all__ = ["Chunk", "Products", "SUMS", "rounding"]

#: Host memory for the opinions of one chunk of directions.
CHUNK_BYTES = 256 * 2**20
#: Directions per vmapped batch at most on an accelerator ...
MAX_BATCH = 32
#: ... and on a CPU, where one direction at a time runs fastest: XLA's batched products of the
#: perturbed weights are slower there than its single ones (measured on ReLU MLPs of 300 to
#: 40,401 parameters: batches of 32 took 1.1 to 2 times as long as batches of 1).
MAX_BATCH_CPU = 1
#: Checks of at most this many (direction, entry) pairs evaluate ±2h with ±h in one program
#: (no second program to compile for the suspicious directions) ...
SMALL_CHECK = 2**21
#: ... and up to this many are compiled for a short compile rather than a fast run (on a CPU).
FAST_COMPILE_CHECK = 2**22
#: Compiled programs kept (Hessian kind; keyed on the twin's structure).
PROGRAM_CACHE_SIZE = 16
#: The running sums kept per leaf: squares and differences of the three opinions.
SUMS = ("bp2", "ad2", "fd2", "bp_ad", "bp-ad", "bp-fd", "fd-ad", "err2")

_U64 = float(np.finfo(np.float64).eps)
_STEP = float(np.cbrt(_U64))


def rounding(up: Any, down: Any, floor: Any, h_total: Any) -> Any:
    """Rounding error of a gradient difference ``(up − down) / h_total`` (NumPy or JAX).

    A gradient entry is rounded relative to its leaf's largest gradient entry ``floor`` at
    least, since the terms it sums may cancel.
    """
    xp = jnp if isinstance(up, jax.Array) else np
    mags = xp.maximum(xp.maximum(xp.abs(up), xp.abs(down)), floor)
    return vd.ROUNDING_SAFETY * _U64 * mags / h_total


@dataclasses.dataclass
class Chunk:
    """One chunk of directions, evaluated and screened.

    Attributes:
        g0: the twin's gradient at θ, flat.
        up, down: the gradient at θ ± h·v per direction, ``(directions, N)``.
        up2, down2: at θ ± 2h·v when evaluated with them, else None.
        exact: the exact product per direction, ``(directions, N)``.
        flagged: entries the screen could not call correct, ``(directions, N)``.
        sums: per leaf, the running sums of :data:`SUMS` over the chunk.
        flagged_count, disagree_count: per leaf, flagged entries, and those where the user's
            product and the exact one disagree.
        worst: per leaf, (excess, direction, entry, user, exact) where the user's product is
            furthest beyond its tolerance of the exact one.
        atol, scale, fd_atol: per leaf and direction, the tolerance's floors and scale.
        floor: per leaf, the largest |∂J/∂θ| (the rounding floor of a gradient entry).
    """

    g0: np.ndarray
    up: np.ndarray
    down: np.ndarray
    up2: np.ndarray | None
    down2: np.ndarray | None
    exact: np.ndarray
    flagged: np.ndarray
    sums: np.ndarray
    flagged_count: np.ndarray
    disagree_count: np.ndarray
    worst: list[tuple[float, int, int, float, float]]
    atol: np.ndarray
    scale: np.ndarray
    fd_atol: np.ndarray
    floor: np.ndarray


_PROGRAMS: collections.OrderedDict[Any, Callable] = collections.OrderedDict()


class Products:
    """Evaluates chunks of directions for one check.

    Args:
        system: the prepared system (its twin computes the cost).
        kind: ``"hessian"`` or ``"gauss_newton"``.
        model_output, loss_of_output: the Gauss-Newton split of the twin (else None).
        count: how many directions the check takes.
        eps, batch_size, memory_budget: the options of the check.
    """

    def __init__(
        self,
        system: System,
        kind: str,
        model_output: Callable | None,
        loss_of_output: Callable | None,
        count: int,
        *,
        eps: float | None,
        batch_size: int | None,
        memory_budget: int | None,
    ) -> None:
        self.system, self.kind, self.eps = system, kind, eps
        self.model_output, self.loss_of_output = model_output, loss_of_output
        self.x = np.concatenate([v.reshape(-1) for v in system.leaves64])
        self.shapes = tuple(tuple(v.shape) for v in system.leaves64)
        self.edges = tuple(int(e) for e in np.cumsum([0, *[math.prod(s) for s in self.shapes]]))
        n = self.x.size
        self.double = count * n <= SMALL_CHECK
        self.fast_compile = count * n <= FAST_COMPILE_CHECK and jax.default_backend() == "cpu"
        outputs = 6 if self.double else 4  # gradients, exact product, user's product
        self.chunk = max(1, min(count, CHUNK_BYTES // (8 * n * outputs)))
        budget = memory_budget or default_memory_budget()
        fit = max(1, budget // max(1, outputs * _twin_bytes(system.twin)))
        most = MAX_BATCH_CPU if jax.default_backend() == "cpu" else MAX_BATCH
        self.batch = int(min(batch_size or min(fit, most), self.chunk))
        self.chunk = self.batch * max(1, self.chunk // self.batch)
        self.checked = False
        self.cost_mismatch = 0.0

    def chunks(self, count: int) -> list[np.ndarray]:
        """The direction indices of each chunk."""
        return [np.arange(a, min(count, a + self.chunk)) for a in range(0, count, self.chunk)]

    def steps(self, vectors: np.ndarray) -> np.ndarray:
        """The step along each direction: ∛u·max(1, ‖θ⊙v‖/‖v‖)/‖v‖, or ``eps``."""
        if self.eps is not None:
            return np.full(vectors.shape[0], float(self.eps))
        norm = np.linalg.norm(vectors, axis=1)
        weighted = np.linalg.norm(vectors * self.x, axis=1) / norm
        return _STEP * np.maximum(1.0, weighted) / norm

    def evaluate(
        self, vectors: np.ndarray, steps: np.ndarray, user: np.ndarray, rtol: np.ndarray
    ) -> Chunk:
        """Gradients at θ ± h·v (± 2h·v for a small check), exact products, and the screen."""
        n = vectors.shape[0]
        valid = np.arange(self.chunk) < n
        vectors, steps, user = (_pad(a, self.chunk) for a in (vectors, steps, user))
        multiples = (1, -1, 2, -2) if self.double else (1, -1)
        program = self._program(multiples, True, self.chunk)
        value, terms, g0, outs, screen = self._run(program, vectors, steps, user, valid, rtol)
        if not self.checked:
            self.cost_mismatch = check_twin(self.system, float(value), float(terms))
            self.checked = True
        outs = np.asarray(outs)[:n]
        sums, flagged_count, disagree_count, excess, atol, scale, fd_atol, floor = (
            np.asarray(s) for s in screen[1:]
        )
        exact = outs[:, -1]
        return Chunk(
            g0=np.asarray(g0),
            up=outs[:, 0],
            down=outs[:, 1],
            up2=outs[:, 2] if self.double else None,
            down2=outs[:, 3] if self.double else None,
            exact=exact,
            flagged=np.asarray(screen[0])[:n],
            sums=sums,
            flagged_count=flagged_count.astype(np.int64),
            disagree_count=disagree_count.astype(np.int64),
            worst=self._worst(excess[:, :n], user[:n], exact, atol[:, :n], rtol),
            atol=atol[:, :n],
            scale=scale[:, :n],
            fd_atol=fd_atol[:, :n],
            floor=floor,
        )

    def _worst(
        self,
        excess: np.ndarray,
        user: np.ndarray,
        exact: np.ndarray,
        atol: np.ndarray,
        rtol: np.ndarray,
    ) -> list[tuple[float, int, int, float, float]]:
        """Per leaf, the entry furthest beyond tolerance: its direction from the screen's
        maxima, the entry along it found again here."""
        out = []
        for i, (a, b) in enumerate(zip(self.edges[:-1], self.edges[1:])):
            if a == b or excess.shape[1] == 0:
                out.append((-np.inf, 0, 0, float("nan"), float("nan")))
                continue
            r = int(np.argmax(excess[i]))
            bp, ad = user[r, a:b], exact[r, a:b]
            with np.errstate(invalid="ignore", over="ignore"):
                row = np.abs(bp - ad) - (rtol[i] * (np.abs(bp) + np.abs(ad)) + atol[i, r])
            j = int(np.argmax(np.nan_to_num(row, nan=np.inf)))
            out.append((float(excess[i, r]), r, j, float(bp[j]), float(ad[j])))
        return out

    def doubled(self, vectors: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The gradient at θ ± 2h·v, for re-evaluating suspicious directions."""
        n = vectors.shape[0]
        size = max(8, 1 << (n - 1).bit_length())
        vectors, steps = _pad(vectors, size), _pad(steps, size)
        program = self._program((2, -2), False, size)
        outs = np.asarray(self._run(program, vectors, steps, None, None, None)[3])[:n]
        return outs[:, 0], outs[:, 1]

    def _run(
        self,
        program: Callable,
        vectors: np.ndarray,
        steps: np.ndarray,
        user: np.ndarray | None,
        valid: np.ndarray | None,
        rtol: np.ndarray | None,
    ) -> Any:
        twin = self.system.twin
        try:
            return program(list(twin.consts), self.x, vectors, steps, user, valid, rtol)
        except JaxcheckError:
            raise
        except jax.errors.JaxRuntimeError:
            raise
        except Exception as err:
            raise InputError(
                f"the JAX twin ({twin.kind}) ran at params but its second derivatives could not "
                f"be taken: {type(err).__name__}: {err}. It must be a pure jax.numpy function "
                f"that jax.jvp of jax.grad can trace.",
                hint="pass a twin that jax.grad and jax.jvp can trace",
            ) from err

    def _program(self, multiples: tuple[int, ...], exact: bool, size: int) -> Callable:
        twin = self.system.twin
        batch = min(self.batch, size)
        key = None
        if self.kind == "hessian" and twin.key is not None:
            key = (twin.key, self.shapes, multiples, exact, size, batch, self.fast_compile)
            hit = _PROGRAMS.get(key)
            if hit is not None:
                _PROGRAMS.move_to_end(key)
                return hit
        if self.kind == "hessian":
            setup = _hessian(twin, self.shapes)
        else:
            setup = _gauss_newton(
                self.system.leaves.treedef, self.shapes, self.model_output, self.loss_of_output
            )
        owner = np.repeat(np.arange(len(self.shapes)), np.diff(self.edges))

        def body(consts, x, vectors, steps, user, valid, rtol):
            g0, displaced, product = setup(consts, x)

            def one(args):
                v, h = args
                # One gradient program, vmapped over the steps, keeps the program small.
                rows = jax.vmap(lambda t: displaced(v, t))(jnp.asarray(multiples) * h)
                if exact:
                    rows = jnp.concatenate([rows, product(v)[None]])
                return rows

            value, terms = cost_and_terms(twin, consts, _unravel(self.shapes)(x))
            outs = jax.lax.map(one, (vectors, steps), batch_size=batch)
            screen = None
            if user is not None:
                screen = _screen(user, g0, outs, steps, valid, rtol, owner, len(self.shapes))
            return value, terms, g0, outs, screen

        # A small check spends most of its time compiling: compile it quickly.
        options = dict(FAST_COMPILE_OPTIONS) if self.fast_compile else None
        program = jax.jit(body, compiler_options=options)
        if key is not None:
            _PROGRAMS[key] = program
            while len(_PROGRAMS) > PROGRAM_CACHE_SIZE:
                _PROGRAMS.popitem(last=False)
        return program


def _pad(a: np.ndarray, size: int) -> np.ndarray:
    """Pads the leading axis to ``size`` by repeating the first row."""
    if a.shape[0] >= size:
        return a
    return np.concatenate([a, np.repeat(a[:1], size - a.shape[0], axis=0)])


def _unravel(shapes: Sequence[tuple[int, ...]]) -> Callable[[jax.Array], list[jax.Array]]:
    edges = np.cumsum([0, *[math.prod(s) for s in shapes]])

    def unravel(x: jax.Array) -> list[jax.Array]:
        return [x[int(a) : int(b)].reshape(s) for a, b, s in zip(edges[:-1], edges[1:], shapes)]

    return unravel


def _flat(tree: Any) -> jax.Array:
    return jnp.concatenate([jnp.reshape(leaf, (-1,)) for leaf in jax.tree_util.tree_leaves(tree)])


def _hessian(twin: Twin, shapes: Sequence[tuple[int, ...]]) -> Callable:
    """``(consts, θ) -> (∇J(θ), v, t ↦ ∇J(θ + t·v), v ↦ H v)`` of the twin."""
    unravel = _unravel(shapes)

    def setup(consts: Any, x: jax.Array) -> tuple[jax.Array, Callable, Callable]:
        def gradient(y: jax.Array) -> jax.Array:
            return jax.grad(lambda z: twin.cost(consts, unravel(z)).astype(jnp.float64))(y)

        def displaced(v: jax.Array, t: jax.Array) -> jax.Array:
            return gradient(x + t * v)

        def product(v: jax.Array) -> jax.Array:
            return jax.jvp(gradient, (x,), (v,))[1]

        return gradient(x), displaced, product

    return setup


def _gauss_newton(
    treedef: Any,
    shapes: Sequence[tuple[int, ...]],
    model_output: Callable,
    loss_of_output: Callable,
) -> Callable:
    """The same for the Gauss-Newton matrix ``Jᵀ H_L J`` of ``loss_of_output ∘ model_output``.

    The displaced gradient is that of the network linearised at θ, ``Jᵀ ∇L(f(θ) + t·J v)``:
    its difference quotient tends to ``Jᵀ H_L J v``.
    """
    unravel = _unravel(shapes)

    def setup(consts: Any, x: jax.Array) -> tuple[jax.Array, Callable, Callable]:
        del consts  # the user's functions close over their own data

        def network(y: jax.Array) -> Any:
            return model_output(jax.tree_util.tree_unflatten(treedef, unravel(y)))

        def loss_gradient(out: Any) -> Any:
            return jax.grad(lambda o: jnp.asarray(loss_of_output(o), jnp.float64).reshape(()))(out)

        out, linear = jax.linearize(network, x)
        _, pullback = jax.vjp(network, x)

        def transpose(cotangent: Any) -> jax.Array:
            return _flat(pullback(cotangent))

        def displaced(v: jax.Array, t: jax.Array) -> jax.Array:
            moved = jax.tree_util.tree_map(lambda o, d: o + t * d, out, linear(v))
            return transpose(loss_gradient(moved))

        def product(v: jax.Array) -> jax.Array:
            return transpose(jax.jvp(loss_gradient, (out,), (linear(v),))[1])

        return transpose(loss_gradient(out)), displaced, product

    return setup


def _screen(
    user: jax.Array,
    g0: jax.Array,
    outs: jax.Array,
    steps: jax.Array,
    valid: jax.Array,
    rtol: jax.Array,
    owner: np.ndarray,
    leaves: int,
) -> tuple[Any, ...]:
    """Per entry, whether the three opinions certainly agree; per leaf, sums and maxima.

    An entry passes the screen where :func:`jaxcheck._engine.verdict.classify.classify` would call it ``ok``
    from the first evaluation (at ±h, rounding error only): the user's product agrees with the
    exact one, finite differences agree with it within their error, and are precise. Every other
    entry is flagged and judged on the host. ``owner`` holds each entry's leaf.
    """

    def per_leaf(x: jax.Array, reduce: Callable) -> jax.Array:
        """(directions, N) → (leaves, directions), reduced over each leaf's entries."""
        return reduce(x.T, owner, num_segments=leaves, indices_are_sorted=True)

    h = steps[:, None]
    up, down, ad, bp = outs[:, 0], outs[:, 1], outs[:, -1], user
    fd = (up - down) / (2 * h)
    floor = jax.ops.segment_max(jnp.abs(g0), owner, num_segments=leaves, indices_are_sorted=True)
    err = rounding(up, down, floor[owner], 2 * h)
    scale = per_leaf(jnp.where(jnp.isfinite(ad), jnp.abs(ad), 0.0), jax.ops.segment_max)
    noise = vd.ROUNDING_SAFETY * _U64 * floor[:, None] / (2 * steps[None, :])
    atol = jnp.maximum(rtol[:, None] * vd.ATOL_FRACTION * scale, noise)
    fd_atol = vd.FD_RTOL * vd.ATOL_FRACTION * scale
    # Back to (directions, N): each entry's leaf's value along its direction.
    a_, s_, f_, r_ = atol.T[:, owner], scale.T[:, owner], fd_atol.T[:, owner], rtol[owner]
    gap = jnp.abs(bp - ad)
    bound = r_ * (jnp.abs(bp) + jnp.abs(ad)) + a_
    bp_ad = (gap <= bound) & jnp.isfinite(bp) & jnp.isfinite(ad)
    fd_ad = (jnp.abs(fd - ad) <= vd.FD_RTOL * (jnp.abs(fd) + jnp.abs(ad)) + f_ + err) & (
        jnp.isfinite(fd) & jnp.isfinite(ad)
    )
    precise = err <= vd.FD_USEFUL * (jnp.abs(fd) + jnp.abs(ad) + vd.ATOL_FRACTION * s_) + 4 * a_
    live = valid[:, None]
    flagged = ~(bp_ad & fd_ad & precise) & live

    def total(x: jax.Array) -> jax.Array:
        return jnp.sum(per_leaf(jnp.where(live, x, 0.0), jax.ops.segment_sum), axis=1)

    sums = jnp.stack(
        [
            total(bp * bp),
            total(ad * ad),
            total(fd * fd),
            total(bp * ad),
            total((bp - ad) ** 2),
            total((bp - fd) ** 2),
            total((fd - ad) ** 2),
            total(err * err),
        ],
        axis=1,
    )
    excess = jnp.where(jnp.isnan(gap - bound), jnp.inf, gap - bound)
    excess = per_leaf(jnp.where(live, excess, -jnp.inf), jax.ops.segment_max)
    return (
        flagged,
        sums,
        total(flagged.astype(jnp.float64)),
        total((flagged & ~bp_ad).astype(jnp.float64)),
        excess,
        atol,
        scale,
        fd_atol,
        floor,
    )


def _twin_bytes(twin: Twin) -> int:
    """Bytes of every intermediate of one evaluation of the twin: what a gradient keeps alive."""
    total = 0
    for eqn in twin.jaxpr.eqns:
        for v in eqn.outvars:
            total += 8 * math.prod(getattr(getattr(v, "aval", None), "shape", ()))
    for v in twin.jaxpr.invars:
        total += 16 * math.prod(getattr(v.aval, "shape", ()))
    return max(total, 1024)
