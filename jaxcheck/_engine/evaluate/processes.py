"""Checks past one machine: the finite differences split over every process of ``jax.distributed``.

Every process runs the same check on its own copy of the params and data. The perturbations of
each batch are split over a mesh of all processes' devices, and the perturbed costs are gathered
back to every process inside the compiled program, so that every process judges the same numbers
and returns the same report. With one process nothing here changes anything.

Before the first collective the processes meet (:mod:`jaxcheck._engine.evaluate.meetings`):
they agree on a status (ok, or the error that stopped one of them) and compare digests of what
makes the check (:func:`agree`, :func:`verify_same_everywhere`). An error on one process, or
inputs that differ, reach every process as the same jaxcheck error within a moment, never as a
hang or an abort from JAX's coordination service.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NoReturn

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcheck._engine.evaluate.meetings import client, meet, noted, shared, value_text
from jaxcheck.errors import InputError, NondeterminismError

__all__ = [
    "AXIS",
    "agree",
    "global_inputs",
    "own_device",
    "probe_mesh",
    "replicated",
    "spans_processes",
    "verify_same_everywhere",
]

#: The mesh axis the perturbations of every batch are split over.
AXIS = "probes"


def spans_processes(devices: Sequence[Any]) -> bool:
    """Whether ``devices`` include devices of other processes (a multi-process mesh)."""
    me = jax.process_index()
    return any(d.process_index != me for d in devices)


def own_device(devices: Sequence[Any]) -> Any:
    """The first of ``devices`` that belongs to this process (the first of all if none does).

    Another process's device reports no memory here; every process sizes its batches from a
    device of its own, so that like machines plan like batches.
    """
    me = jax.process_index()
    return next((d for d in devices if d.process_index == me), devices[0])


def probe_mesh(devices: Sequence[Any]) -> Mesh | None:
    """The 1-D mesh named :data:`AXIS` over ``devices`` (all processes' devices), or None for one.

    Devices are kept in the order given; ``jax.devices()`` lists them process by process, so each
    process holds a contiguous share of every batch.
    """
    return Mesh(np.array(devices), (AXIS,)) if len(devices) > 1 else None


def replicated(tree: Any, mesh: Mesh | None) -> Any:
    """Inside a program: ``tree`` replicated on every device of a mesh that spans processes.

    The perturbed costs come out of ``shard_map`` split over the mesh; replicated, they can be
    read by every process (``np.asarray``) without a separate gather after the program. On one
    process the tree is returned unchanged.
    """
    if mesh is None or not spans_processes(list(mesh.devices.flat)):
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, PartitionSpec()))


def global_inputs(
    consts: Sequence[np.ndarray],
    leaves: Sequence[np.ndarray],
    backprop: Sequence[np.ndarray],
    probe_args: Sequence[Sequence[np.ndarray]],
    devices: Sequence[Any],
) -> tuple[list[Any], list[Any], list[Any], list[tuple[Any, ...]]]:
    """The program's inputs for a mesh that spans processes.

    Every process holds all of every input (the whole check runs in every process), so each one
    fills its own devices' shards of the probe arguments (batches × perturbations × ...) from
    its copy, split along the second axis as the program's ``shard_map`` expects. The data,
    params and backprop stay NumPy arrays: ``jit`` takes a NumPy argument to be the same value
    on every process, which :func:`verify_same_everywhere` has checked, and the ``shard_map``
    body closes over them, where an array committed to the mesh would clash with the body's
    manual axis. On one process the inputs are returned as they came.
    """
    if not spans_processes(devices):
        return list(consts), list(leaves), list(backprop), [tuple(a) for a in probe_args]
    mesh = probe_mesh(devices)
    assert mesh is not None  # the devices span processes
    split = NamedSharding(mesh, PartitionSpec(None, AXIS))

    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, split, lambda index: x[index])

    # Data the twin closed over as arrays of this process's device go in as host copies.
    return (
        [c if _is_key(c) else np.asarray(c) for c in consts],
        list(leaves),
        list(backprop),
        [tuple(put(a) for a in args) for args in probe_args],
    )


def _host(x: Any) -> np.ndarray:
    """``x`` as a NumPy array (a typed PRNG key as its key data)."""
    return np.asarray(jax.random.key_data(x) if _is_key(x) else x)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _digest(arrays: Sequence[Any]) -> bytes:
    digest = hashlib.sha256()
    for x in arrays:
        x = np.ascontiguousarray(_host(x))
        digest.update(f"{x.shape}{x.dtype.str}".encode())
        digest.update(x.reshape(-1).view(np.uint8).data)
    return digest.digest()


def _hex(arrays: Sequence[Any]) -> list[str]:
    return [_digest([x]).hex()[:32] for x in arrays]


def _structure(arrays: Sequence[Any]) -> bytes:
    return repr(
        [(np.shape(x), str(getattr(x, "dtype", type(x).__name__))) for x in arrays]
    ).encode()


def _stable(key: Any) -> Any:
    """A twin's key without object ids (another process's custom rule has another id)."""
    if isinstance(key, tuple):
        if len(key) == 2 and key[0] == "object" and isinstance(key[1], int):
            return ("object",)
        return tuple(_stable(k) for k in key)
    return key


def _twin_text(twin: Any) -> str:
    if twin is None:
        return "none"
    body = repr(_stable(twin.key)) if twin.key is not None else str(twin.jaxpr)
    return hashlib.sha256(f"{twin.kind}|{body}".encode()).hexdigest()[:32]


def _differ(entries: list[dict], field: str) -> list[int]:
    return [p for p, e in enumerate(entries) if e[field] != entries[0][field]]


def _first(entries: list[dict], field: str) -> tuple[int, list[int]]:
    """The first index of the list ``field`` that differs, and the processes where it does."""
    ours = entries[0][field]
    for i in range(len(ours)):
        bad = [p for p, e in enumerate(entries) if e[field][i] != ours[i]]
        if bad:
            return i, bad
    return 0, _differ(entries, field)


def _vs(processes: list[int]) -> str:
    return f"process 0 vs {', '.join(map(str, processes))}"


_ADVICE = (
    "every process runs the whole check on its own copy: start them all from the same params "
    "(the same seed or checkpoint), load the same data and pass the same options and twin; "
    "only the perturbations are split"
)


def agree(
    *,
    twin: Any,
    leaves: Sequence[Any],
    paths: Sequence[str],
    backprop: Sequence[Any],
    options: Any,
    cost: float | None = None,
) -> None:
    """Every process meets before the first collective and compares its check with the others.

    Compared: the params' paths, shapes and dtypes; the options (``Options`` and the door's own
    keywords); the JAX twin's structure with the constants written into it; the params; the
    data the twin closes over; the NumPy cost at the params (``cost``: it tells when the data
    the NumPy code closes over differ, also without a twin); the user's gradient. Does nothing
    unless the check's devices span processes. An error another process met before this point
    is raised here too.

    Raises:
        InputError: something differs; the message names it and the processes (on every
            process the same message).
        NondeterminismError: ``grad`` returned different gradients at the same params.
    """
    if client() is None:
        return
    if not spans_processes(options.devices if options.devices is not None else jax.devices()):
        return
    door, named = noted()
    fields = ("method", "samples", "directions", "eps", "rtol", "batch_size", "seed")
    for field in (*fields, "memory_budget", "incremental", "twin"):
        named[f"{door}(): {field}"] = value_text(getattr(options, field))
    consts = () if twin is None else twin.consts
    entries = meet(
        {
            "structure": _structure(leaves).decode() + repr(list(paths)),
            "options": sorted(named.items()),
            "twin": _twin_text(twin),
            "params": _hex(leaves),
            "cost": float(cost).hex() if cost is not None else "",
            "data": [_structure(consts).decode(), *_hex(consts)],
            "backprop": _hex(backprop),
        }
    )
    _raise_difference(entries, leaves, paths, consts)


#: What differs between processes, in the order it is reported: the sentence ({where}: the
#: processes; {detail}: what differs there) and the hint. Every sentence ends with _ADVICE.
_DIFFERENCES = {
    "structure": (
        "the params have other paths, shapes or dtypes between processes ({where})",
        "pass identical params to the check in every process",
    ),
    "shapes": (
        "the params or the data the JAX twin closes over have other shapes or dtypes between "
        "processes ({where})",
        "pass identical params and data to the check in every process",
    ),
    "options": (
        "the options differ between processes ({where}){detail}",
        "pass the same options to the check in every process",
    ),
    "twin": (
        "the JAX twin differs between processes ({where}): its operations or a constant written "
        "into it (a Python number) are not the same",
        "trace the same jax_cost, with the same constants, in every process",
    ),
    "params": (
        "params leaf {detail} differs between processes ({where}; compared by SHA-256 of the "
        "bytes)",
        "pass identical params to the check in every process",
    ),
    "data": (
        "the data the JAX twin closes over differ between processes ({where}{detail})",
        "load the same data in every process",
    ),
    "cost": (
        "the NumPy cost at params differs between processes ({where}{detail}) although the "
        "params agree: the data it closes over differ",
        "load the same data in every process",
    ),
    "backprop": (
        "grad returned different gradients{detail} between processes ({where}) at identical "
        "params: its data or its randomness differ between processes",
        None,
    ),
    "plan": (
        "the processes planned other batches of perturbations ({where}: a different "
        "batch_size, memory_budget, devices or device memory)",
        "pass the same options, and an explicit batch_size= on unlike machines, in every process",
    ),
}


def _refuse(name: str, bad: list[int], detail: str = "") -> NoReturn:
    """Raises the error for ``name`` differing on processes ``bad``, the same on every process."""
    sentence, hint = _DIFFERENCES[name]
    text = f"{sentence.format(where=_vs(bad), detail=detail)}; {_ADVICE}."
    if name == "backprop":
        raise shared(NondeterminismError(text))
    raise shared(InputError(text, hint=hint))


def _leaf(i: int, leaves: Sequence[Any], paths: Sequence[str] | None) -> str:
    name = repr(paths[i]) if paths else f"{i} of {len(leaves)}"
    return f"{name} (shape {np.shape(leaves[i])})"


def _detail(
    name: str,
    entries: list[dict],
    bad: list[int],
    leaves: Sequence[Any],
    paths: Sequence[str],
    consts: Sequence[Any],
) -> tuple[list[int], str]:
    """The processes where ``name`` differs, and what differs there in words."""
    if name in ("params", "backprop", "data"):
        i, bad = _first(entries, name)
        if name == "params":
            return bad, _leaf(i, leaves, paths)
        if name == "backprop":
            return bad, f" for leaf {paths[i]!r}"
        if i == 0:
            return bad, ": their shapes or dtypes"
        return bad, f": array {i} of {len(consts)}, shape {np.shape(consts[i - 1])}"
    if name == "options":
        theirs = dict(map(tuple, entries[bad[0]]["options"]))
        ours = dict(map(tuple, entries[0]["options"]))
        names = sorted(n for n in set(ours) | set(theirs) if ours.get(n) != theirs.get(n))
        return bad, (
            f": {', '.join(names)} ({names[0]} is {ours.get(names[0], 'not given')} on process "
            f"0 and {theirs.get(names[0], 'not given')} on process {bad[0]})"
        )
    if name == "cost":
        values = [float.fromhex(entries[p]["cost"]) for p in (0, bad[0])]
        return bad, f": {values[0]!r} vs {values[1]!r}"
    return bad, ""


def _raise_difference(
    entries: list[dict], leaves: Sequence[Any], paths: Sequence[str], consts: Sequence[Any]
) -> None:
    for name in ("structure", "options", "twin", "params", "data", "cost", "backprop"):
        if bad := _differ(entries, name):
            _refuse(name, *_detail(name, entries, bad, leaves, paths, consts))


def _gather(rows: list[bytes]) -> np.ndarray:
    """Every process's rows of 32-byte digests, as an array (processes, rows, 32)."""
    mine = np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), -1)
    return np.asarray(multihost_utils.process_allgather(mine))


def _exchange(rows: list[bytes]) -> np.ndarray:
    """Like :func:`_gather`, through the key-value store (a meeting) when there is one."""
    if client() is None:
        return _gather(rows)
    entries = meet({"rows": [r.hex() for r in rows]})
    return np.array(
        [[np.frombuffer(bytes.fromhex(r), np.uint8) for r in e["rows"]] for e in entries]
    )


def verify_same_everywhere(
    consts: Sequence[Any],
    leaves: Sequence[Any],
    backprop: Sequence[Any],
    plan: Any,
    devices: Sequence[Any],
) -> None:
    """Raises unless every process has the same params, data, backprop and batch plan.

    Each process hashes its copies (SHA-256 over the bytes) and the hashes are exchanged (a
    meeting in the key-value store, where an error another process met is raised too): a few
    bytes per process, whatever the number of parameters. Processes that disagreed would judge
    different checks, or deadlock in a program of another shape. Every process sees the same
    hashes, so every process raises the same error.

    Raises:
        InputError: the params (the message names the first differing leaf) or the data the
            JAX twin closes over differ between processes, or the processes planned different
            batches (a different ``batch_size``, ``memory_budget`` or device memory).
        NondeterminismError: ``grad`` returned different gradients at the same params.
    """
    if not spans_processes(devices):
        return
    names = ("shapes", "params", "data", "backprop", "plan")
    rows = [
        hashlib.sha256(_structure(leaves) + b"|" + _structure(consts)).digest(),
        _digest(leaves),
        _digest(consts),
        _digest(backprop),
        hashlib.sha256(repr(plan).encode()).digest(),
    ]
    every = _exchange(rows + [_digest([v]) for v in leaves])
    differ = {
        name: [p for p in range(every.shape[0]) if not np.array_equal(every[p, i], every[0, i])]
        for i, name in enumerate(names)
    }
    for name, bad in differ.items():
        if not bad:
            continue
        detail = ""
        if name == "params":
            rows_of = every[:, len(names) :]
            first = next(i for i in range(len(leaves)) if np.any(rows_of[:, i] != rows_of[0, i]))
            detail = _leaf(first, leaves, None)
        _refuse(name, bad, detail)
