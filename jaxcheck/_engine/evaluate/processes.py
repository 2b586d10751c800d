"""Checks past one machine: the finite differences split over every process of ``jax.distributed``.

Every process runs the same check on its own copy of the params and data. The perturbations of
each batch are split over a mesh of all processes' devices, and the perturbed costs are gathered
back to every process inside the compiled program, so that every process judges the same numbers
and returns the same report. With one process nothing here changes anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcheck.errors import InputError, NondeterminismError

__all__ = [
    "AXIS",
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
    if mesh is None or not spans_processes(mesh.devices.flat):
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
    split = NamedSharding(probe_mesh(devices), PartitionSpec(None, AXIS))

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
        digest.update(x)
    return digest.digest()


def _structure(arrays: Sequence[Any]) -> bytes:
    return repr(
        [(np.shape(x), str(getattr(x, "dtype", type(x).__name__))) for x in arrays]
    ).encode()


def _gather(rows: list[bytes]) -> np.ndarray:
    """Every process's rows of 32-byte digests, as an array (processes, rows, 32)."""
    mine = np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), -1)
    return np.asarray(multihost_utils.process_allgather(mine))


def verify_same_everywhere(
    consts: Sequence[Any],
    leaves: Sequence[Any],
    backprop: Sequence[Any],
    plan: Any,
    devices: Sequence[Any],
) -> None:
    """Raises unless every process has the same params, data, backprop and batch plan.

    Each process hashes its copies (SHA-256 over the bytes) and the hashes are exchanged: a few
    bytes per process, one collective, whatever the number of parameters. Processes that
    disagreed would judge different checks, or deadlock in a program of another shape. Every
    process sees the same gathered hashes, so every process raises the same error.

    Raises:
        InputError: the params (the message names the first differing leaf) or the data the
            JAX twin closes over differ between processes, or the processes planned different
            batches (a different ``batch_size``, ``memory_budget`` or device memory).
        NondeterminismError: ``grad`` returned different gradients at the same params.
    """
    if not spans_processes(devices):
        return
    names = ("structure", "params", "data", "backprop", "plan")
    rows = [
        hashlib.sha256(_structure(leaves) + b"|" + _structure(consts)).digest(),
        _digest(leaves),
        _digest(consts),
        _digest(backprop),
        hashlib.sha256(repr(plan).encode()).digest(),
    ]
    every = _gather(rows)
    differ = {
        name: [p for p in range(every.shape[0]) if not np.array_equal(every[p, i], every[0, i])]
        for i, name in enumerate(names)
    }
    advice = (
        "every process runs the whole check on its own copy: start them all from the same params "
        "(the same seed or checkpoint) and load the same data; only the perturbations are split"
    )
    if differ["structure"]:
        raise InputError(
            f"the params or the JAX twin's data have different shapes on processes "
            f"{differ['structure']} than on process 0; {advice}.",
            hint="pass identical params and data to jc.check in every process",
        )
    if differ["params"]:
        leaf_rows = _gather([_digest([v]) for v in leaves])
        first = next(
            i for i in range(len(leaves)) if not np.all(leaf_rows[:, i] == leaf_rows[0, i])
        )
        raise InputError(
            f"params differ between processes: leaf {first} of {len(leaves)} (shape "
            f"{np.shape(leaves[first])}) on processes {differ['params']} is not process 0's "
            f"(compared by SHA-256 of the bytes); {advice}.",
            hint="pass identical params to jc.check in every process",
        )
    if differ["data"]:
        raise InputError(
            f"the data the JAX twin closes over differ on processes {differ['data']} from "
            f"process 0's; {advice}.",
            hint="load the same data in every process",
        )
    if differ["backprop"]:
        raise NondeterminismError(
            f"grad returned different gradients on processes {differ['backprop']} than on "
            f"process 0 at identical params: its data or its randomness differ between "
            f"processes; {advice}."
        )
    if differ["plan"]:
        raise InputError(
            f"processes {differ['plan']} planned other batches of perturbations than process 0 "
            f"(different batch_size, memory_budget, devices or device memory); pass the same "
            f"options everywhere, and an explicit batch_size= on unlike machines.",
            hint="pass the same batch_size to jc.check in every process",
        )
