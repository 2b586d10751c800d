"""The compiled side of the product doors (:func:`jaxcheck.check_hvp`): the exact products of
a chunk of directions in one program, and, only where they are needed, the twin's gradient at
θ ± s·h·v with a first screening of every entry on the device.

A product is a :class:`ProductSpec` (the Hessian's and the Gauss-Newton matrix's are defined
here): how to compute the exact product from the twin with JAX, what finite differences of the
twin's gradient mean for it (or that it has none), and its words for messages. A new product
door is one specification plus one thin front in :mod:`jaxcheck._engine.doors`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
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

__all__ = [
    "GAUSS_NEWTON",
    "HESSIAN",
    "SPECS",
    "SUMS",
    "Chunk",
    "Exact",
    "ProductSpec",
    "Products",
    "gradient_rounding",
    "tolerance_floor",
]

#: Host memory for the opinions of one chunk of directions.
CHUNK_BYTES = 256 * 2**20
#: Directions per vmapped batch at most on an accelerator ...
MAX_BATCH = 32
#: ... and on a CPU, where one direction at a time runs fastest for gradients at displaced
#: points: XLA's batched products of the perturbed weights are slower there than its single ones
#: (measured on ReLU MLPs of 300 to 40,401 parameters: batches of 32 took 1.1 to 2 times as long
#: as batches of 1).
MAX_BATCH_CPU = 1
#: Directions per vmapped batch of the exact products on every backend. They apply the twin's
#: gradient linearised once at θ, so a batch shares the weights (``W @ [dA₁ … dA_B]`` is one
#: matmul) instead of perturbing them.
EXACT_BATCH = 32
#: Checks of at most this many (direction, entry) pairs evaluate ±2h with ±h in one program
#: (no second program to compile for the suspicious directions) ...
SMALL_CHECK = 2**21
#: ... and up to this many are compiled for a short compile rather than a fast run (on a CPU).
FAST_COMPILE_CHECK = 2**22
#: Compiled programs kept (keyed on the twin's structure, for cacheable specifications).
PROGRAM_CACHE_SIZE = 16
#: The running sums the device screen keeps per leaf: squares and differences of the opinions.
SUMS = ("bp2", "ad2", "fd2", "bp_ad", "bp-ad", "bp-fd", "fd-ad", "err2")
#: Multiples of the step along the probe direction ``w`` (and along a direction that needs
#: finite differences in a small check): ±h and ±2h.
MULTIPLES = (1, -1, 2, -2)

_STEP = float(np.cbrt(vd.U64))

#: ``(consts, θ) -> (∇J(θ), displaced or None, linear)``: ``displaced(v, t)`` is the gradient
#: whose difference quotient in ``t`` tends to the product along ``v``; ``linear(v)`` the exact
#: product.
Setup = Callable[[Any, jax.Array], tuple[jax.Array, Callable | None, Callable]]


@dataclasses.dataclass(frozen=True)
class ProductSpec:
    """What a product door checks, and how its two references are computed.

    Attributes:
        kind: the name of the product (``kind=`` of the door), e.g. ``"hessian"``.
        title: the product in words, for headers and verdicts.
        noun: what the user's function is called in sentences (``"hvp"``); the subject of
            messages is ``noun(params, v)``.
        exact: the exact reference in words (``"the exact product"``).
        finite_differences: what finite differences of the twin's gradient are for this
            product, in words, or None when the product has none (then the user's product is
            judged against the exact one alone).
        functions: the JAX functions the door takes besides the twin (their keyword names); the
            twin is then ``compose`` of them, and ``jax_cost`` is not taken.
        build: ``(twin, treedef, shapes, functions) -> Setup``.
        compose: builds the twin from ``functions`` (when there are any).
        cacheable: whether compiled programs may be kept on the twin's structure (not when the
            user's own functions are traced into them).
    """

    kind: str
    title: str
    noun: str
    exact: str
    finite_differences: str | None
    build: Callable[[Twin, Any, Sequence[tuple[int, ...]], Mapping[str, Callable]], Setup]
    functions: tuple[str, ...] = ()
    compose: Callable[[Mapping[str, Callable]], Callable] | None = None
    cacheable: bool = True

    @property
    def subject(self) -> str:
        """The user's product as called, for messages: ``"hvp(params, v)"``."""
        return self.call("v")

    def call(self, argument: str) -> str:
        """The user's product called on ``argument``: ``"hvp(params, 2.5·v)"``."""
        return f"{self.noun}(params, {argument})"

    @property
    def witnesses(self) -> str:
        """The references the user's product is judged against, in words."""
        if self.finite_differences is None:
            return self.exact
        return f"{self.exact} and {self.finite_differences}"


def gradient_rounding(up: Any, down: Any, floor: Any, h_total: Any, xp: Any = np) -> Any:
    """Rounding error of a gradient difference ``(up − down) / h_total``.

    A gradient entry is rounded relative to its leaf's largest gradient entry ``floor`` at
    least, since the terms it sums may cancel: :func:`~jaxcheck._engine.verdict.classify.
    rounding_error` of the larger of the two and the floor.
    """
    return vd.rounding_error(xp.maximum(xp.abs(up), floor), down, h_total, xp=xp)


def tolerance_floor(rtol: Any, scale: Any, floor: Any, steps: Any, xp: Any = np) -> tuple[Any, Any]:
    """Per leaf and direction, the absolute floors of the user's product against the exact one
    (``atol``) and of finite differences against it (``fd_atol``).

    Args:
        rtol: per leaf, the relative tolerance, ``(leaves,)``.
        scale: per leaf and direction, the largest |exact product| entry, ``(leaves, dirs)``.
        floor: per leaf, the largest |∂J/∂θ|, ``(leaves,)``.
        steps: per direction, the step h, ``(dirs,)``.
        xp: ``numpy`` or ``jax.numpy``.

    ``atol`` is a fraction of rtol times the leaf's scale, and never below the rounding of a
    gradient difference at the step (finite differences cannot see finer).
    """
    noise = gradient_rounding(floor[:, None], 0.0, 0.0, 2 * steps[None, :], xp=xp)
    atol = xp.maximum(rtol[:, None] * vd.ATOL_FRACTION * scale, noise)
    return atol, vd.FD_RTOL * vd.ATOL_FRACTION * scale


@dataclasses.dataclass
class Exact:
    """The exact products of one chunk, and the twin's gradient along the probe ``w``.

    Attributes:
        g0: the twin's gradient at θ, flat.
        products: the exact product per direction, ``(directions, N)``.
        along_w: the exact product along ``w``.
        displaced_w: the gradient at θ + (h, −h, 2h, −2h)·w, ``(4, N)``; None without finite
            differences.
    """

    g0: np.ndarray
    products: np.ndarray
    along_w: np.ndarray
    displaced_w: np.ndarray | None


@dataclasses.dataclass
class Chunk:
    """Directions evaluated with finite differences, and screened.

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
        spec: the product checked.
        functions: the JAX functions ``spec.functions`` names (else empty).
        count: how many directions the check takes.
        eps, batch_size, memory_budget: the options of the check.
    """

    def __init__(
        self,
        system: System,
        spec: ProductSpec,
        functions: Mapping[str, Callable],
        count: int,
        *,
        eps: float | None,
        batch_size: int | None,
        memory_budget: int | None,
    ) -> None:
        self.system, self.spec, self.functions, self.eps = system, spec, functions, eps
        if system.twin is None:  # prepared with twin="required": cannot happen
            raise InputError(f"a {spec.title} check needs a JAX twin of the cost.")
        self.twin: Twin = system.twin
        self.x = np.concatenate([v.reshape(-1) for v in system.leaves64])
        self.shapes = tuple(tuple(v.shape) for v in system.leaves64)
        self.edges = tuple(int(e) for e in np.cumsum([0, *[math.prod(s) for s in self.shapes]]))
        self.owner = np.repeat(np.arange(len(self.shapes)), np.diff(self.edges))
        n = self.x.size
        self.double = count * n <= SMALL_CHECK
        cpu = jax.default_backend() == "cpu"
        self.fast_compile = count * n <= FAST_COMPILE_CHECK and cpu
        outputs = 6 if self.double else 4  # gradients, exact product, user's product
        self.chunk = max(1, min(count, CHUNK_BYTES // (8 * n * outputs)))
        budget = memory_budget or default_memory_budget()
        self.fit = max(1, budget // max(1, outputs * _twin_bytes(self.twin)))
        most = MAX_BATCH_CPU if cpu else MAX_BATCH
        self.batch = int(min(batch_size or min(self.fit, most), self.chunk))
        self.exact_batch = int(min(batch_size or min(self.fit, EXACT_BATCH), self.chunk + 1))
        self.chunk = self.batch * max(1, self.chunk // self.batch)
        self.checked = False
        self._setup: Setup | None = None
        self.cost_mismatch = 0.0

    @property
    def has_finite_differences(self) -> bool:
        """Whether the product has a finite-difference reference."""
        return self.spec.finite_differences is not None

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

    def exact(self, vectors: np.ndarray, w: np.ndarray, h_w: float) -> Exact:
        """The exact products along ``vectors`` and ``w``, in one program (the twin's cost at θ
        is checked on the first call), with the gradient at θ ± h·w, ± 2h·w."""
        n = vectors.shape[0]
        rows = _pad(np.concatenate([vectors, w[None]]), self.chunk + 1)
        program = self._exact_program(rows.shape[0])
        value, terms, g0, products, displaced = self._run(program, rows, np.float64(h_w))
        if not self.checked:
            self.cost_mismatch = check_twin(self.system, float(value), float(terms))
            self.checked = True
        products = np.asarray(products)
        return Exact(
            g0=np.asarray(g0),
            products=products[:n],
            along_w=products[n],
            displaced_w=None if displaced is None else np.asarray(displaced),
        )

    def evaluate(
        self,
        vectors: np.ndarray,
        steps: np.ndarray,
        user: np.ndarray,
        exact: np.ndarray,
        rtol: np.ndarray,
    ) -> Chunk:
        """Gradients at θ ± h·v (± 2h·v for a small check) along ``vectors``, and the screen."""
        n = vectors.shape[0]
        size = min(self.chunk, _bucket(n))
        valid = np.arange(max(size, n)) < n
        vectors, steps, user, exact = (_pad(a, size) for a in (vectors, steps, user, exact))
        multiples = MULTIPLES if self.double else MULTIPLES[:2]
        program = self._displaced_program(multiples, True, vectors.shape[0])
        g0, outs, screen = self._run(program, vectors, steps, user, exact, valid, rtol)
        outs = np.asarray(outs)[:n]
        sums, flagged_count, disagree_count, excess, atol, scale, fd_atol, floor = (
            np.asarray(s) for s in screen[1:]
        )
        exact = exact[:n]
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
            row = vd.tolerance_excess(user[r, a:b], exact[r, a:b], rtol[i], atol[i, r])
            j = int(np.argmax(row))
            out.append((float(excess[i, r]), r, j, float(user[r, a + j]), float(exact[r, a + j])))
        return out

    def doubled(self, vectors: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The gradient at θ ± 2h·v, for re-evaluating suspicious directions."""
        n = vectors.shape[0]
        size = _bucket(n)
        vectors, steps = _pad(vectors, size), _pad(steps, size)
        program = self._displaced_program((2, -2), False, size)
        outs = np.asarray(self._run(program, vectors, steps)[1])[:n]
        return outs[:, 0], outs[:, 1]

    def _run(self, program: Callable, *args: Any) -> Any:
        twin = self.twin
        try:
            return program(list(twin.consts), self.x, *args)
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

    def _setup_fn(self) -> Setup:
        if self._setup is None:
            self._setup = self.spec.build(
                self.twin, self.system.leaves.treedef, self.shapes, self.functions
            )
        return self._setup

    def _cached(self, key: tuple[Any, ...], make: Callable[[], Callable]) -> Callable:
        """The program for ``key``, compiled once per twin structure (cacheable specs)."""
        twin = self.twin
        full = None
        if self.spec.cacheable and twin.key is not None:
            full = (self.spec.kind, twin.key, self.shapes, self.fast_compile, *key)
            hit = _PROGRAMS.get(full)
            if hit is not None:
                _PROGRAMS.move_to_end(full)
                return hit
        # A small check spends most of its time compiling: compile it quickly.
        options = dict(FAST_COMPILE_OPTIONS) if self.fast_compile else None
        program = jax.jit(make(), compiler_options=options)
        if full is not None:
            _PROGRAMS[full] = program
            while len(_PROGRAMS) > PROGRAM_CACHE_SIZE:
                _PROGRAMS.popitem(last=False)
        return program

    def _exact_program(self, size: int) -> Callable:
        twin, shapes, setup = self.twin, self.shapes, self._setup_fn()
        batch = min(self.exact_batch, size)
        fd = self.has_finite_differences

        def make() -> Callable:
            def body(consts, x, vectors, h):
                g0, displaced, linear = setup(consts, x)
                products = jax.lax.map(linear, vectors, batch_size=batch)
                displaced_w = None
                if fd and displaced is not None:
                    w = vectors[-1]
                    displaced_w = jax.vmap(lambda t: displaced(w, t))(jnp.asarray(MULTIPLES) * h)
                value, terms = cost_and_terms(twin, consts, _unravel(shapes)(x))
                return value, terms, g0, products, displaced_w

            return body

        return self._cached(("exact", size, batch), make)

    def _displaced_program(self, multiples: tuple[int, ...], screen: bool, size: int) -> Callable:
        setup, count = self._setup_fn(), len(self.shapes)
        batch = min(self.batch, size)
        owner = self.owner

        def make() -> Callable:
            def body(consts, x, vectors, steps, user=None, exact=None, valid=None, rtol=None):
                g0, displaced, _ = setup(consts, x)

                def one(args):
                    v, h = args
                    # One gradient program, vmapped over the steps, keeps the program small.
                    return jax.vmap(lambda t: displaced(v, t))(jnp.asarray(multiples) * h)

                outs = jax.lax.map(one, (vectors, steps), batch_size=batch)
                found = None
                if screen:
                    rows = jnp.concatenate([outs, exact[:, None]], axis=1)
                    found = _screen(user, g0, rows, steps, valid, rtol, owner, count)
                return g0, outs, found

            return body

        return self._cached(("displaced", multiples, screen, size, batch), make)


def _bucket(n: int) -> int:
    return max(8, 1 << (int(n) - 1).bit_length())


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


def _hessian(
    twin: Twin, treedef: Any, shapes: Sequence[tuple[int, ...]], functions: Mapping[str, Callable]
) -> Setup:
    """The Hessian of the twin: ``∇J(θ + t·v)`` displaced, ``H v`` linearised once at θ."""
    del treedef, functions
    unravel = _unravel(shapes)

    def setup(consts: Any, x: jax.Array) -> tuple[jax.Array, Callable, Callable]:
        def gradient(y: jax.Array) -> jax.Array:
            return jax.grad(lambda z: twin.cost(consts, unravel(z)).astype(jnp.float64))(y)

        def displaced(v: jax.Array, t: jax.Array) -> jax.Array:
            return gradient(x + t * v)

        g0, linear = jax.linearize(gradient, x)
        return g0, displaced, linear

    return setup


def _gauss_newton(
    twin: Twin, treedef: Any, shapes: Sequence[tuple[int, ...]], functions: Mapping[str, Callable]
) -> Setup:
    """The same for the Gauss-Newton matrix ``Jᵀ H_L J`` of ``loss_of_output ∘ model_output``.

    The displaced gradient is that of the network linearised at θ, ``Jᵀ ∇L(f(θ) + t·J v)``:
    its difference quotient tends to ``Jᵀ H_L J v``.
    """
    del twin  # the user's functions close over their own data
    unravel = _unravel(shapes)
    model_output, loss_of_output = functions["model_output"], functions["loss_of_output"]

    def setup(consts: Any, x: jax.Array) -> tuple[jax.Array, Callable, Callable]:
        del consts

        def network(y: jax.Array) -> Any:
            return model_output(jax.tree_util.tree_unflatten(treedef, unravel(y)))

        def loss_gradient(out: Any) -> Any:
            return jax.grad(lambda o: jnp.asarray(loss_of_output(o), jnp.float64).reshape(()))(out)

        out, jacobian = jax.linearize(network, x)
        _, pullback = jax.vjp(network, x)
        g_out, curvature = jax.linearize(loss_gradient, out)

        def transpose(cotangent: Any) -> jax.Array:
            return _flat(pullback(cotangent))

        def displaced(v: jax.Array, t: jax.Array) -> jax.Array:
            moved = jax.tree_util.tree_map(lambda o, d: o + t * d, out, jacobian(v))
            return transpose(loss_gradient(moved))

        def linear(v: jax.Array) -> jax.Array:
            return transpose(curvature(jacobian(v)))

        return transpose(g_out), displaced, linear

    return setup


def _compose_gauss_newton(functions: Mapping[str, Callable]) -> Callable:
    model_output, loss_of_output = functions["model_output"], functions["loss_of_output"]

    def twin(params: Any) -> Any:
        return loss_of_output(model_output(params))

    return twin


#: ``H v``, the Hessian of the cost times a direction.
HESSIAN = ProductSpec(
    kind="hessian",
    title="Hessian-vector product",
    noun="hvp",
    exact="the exact product",
    finite_differences="finite differences of the gradient",
    build=_hessian,
)
#: ``Jᵀ H_L J v`` of ``loss_of_output ∘ model_output``; its finite differences are those of the
#: linearised network's gradient, which check the loss's curvature (``J`` comes from autodiff in
#: both references).
GAUSS_NEWTON = ProductSpec(
    kind="gauss_newton",
    title="Gauss-Newton product",
    noun="hvp",
    exact="the exact Gauss-Newton product",
    finite_differences="finite differences of the linearised gradient",
    build=_gauss_newton,
    functions=("model_output", "loss_of_output"),
    compose=_compose_gauss_newton,
    cacheable=False,
)
#: The product specifications by ``kind``.
SPECS = {spec.kind: spec for spec in (HESSIAN, GAUSS_NEWTON)}


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

    An entry passes the screen where :func:`jaxcheck._engine.verdict.classify.classify` would
    call it ``ok`` from the first evaluation (at ±h, rounding error only): the user's product
    agrees with the exact one, finite differences agree with it within their error, and are
    precise. Every other entry is flagged and judged on the host. ``owner`` holds each entry's
    leaf.
    """

    def per_leaf(x: jax.Array, reduce: Callable) -> jax.Array:
        """(directions, N) → (leaves, directions), reduced over each leaf's entries."""
        return reduce(x.T, owner, num_segments=leaves, indices_are_sorted=True)

    h = steps[:, None]
    up, down, ad, bp = outs[:, 0], outs[:, 1], outs[:, -1], user
    fd = (up - down) / (2 * h)
    floor = jax.ops.segment_max(jnp.abs(g0), owner, num_segments=leaves, indices_are_sorted=True)
    err = gradient_rounding(up, down, floor[owner], 2 * h, xp=jnp)
    scale = per_leaf(jnp.where(jnp.isfinite(ad), jnp.abs(ad), 0.0), jax.ops.segment_max)
    atol, fd_atol = tolerance_floor(rtol, scale, floor, steps, xp=jnp)
    # Back to (directions, N): each entry's leaf's value along its direction.
    a_, s_, f_, r_ = atol.T[:, owner], scale.T[:, owner], fd_atol.T[:, owner], rtol[owner]
    bp_ad = vd.close(bp, ad, r_, a_, xp=jnp)
    fd_ad = vd.close(fd, ad, vd.FD_RTOL, f_ + err, xp=jnp)
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
    excess = vd.tolerance_excess(bp, ad, r_, a_, xp=jnp)
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
