"""Where the point clouds live: rows split over one axis of a device mesh.

`row_sharding(x=x, y=y)` reads the placement of the input clouds (for
example `jax.device_put(x, NamedSharding(mesh, P("points")))`) and returns a
`RowSharding`, or `None` for arrays on one device, which then take the
single-device path unchanged. The result is a static field of `Coupling` and
`Config`, so every streaming reduction knows it (`ot_matfree/_stream/engine.py`).

The placement is read from the array's type: `x.sharding` for an array,
`jax.typeof(x).sharding` for a tracer. A tracer only carries it on a mesh
with `Explicit` axes (the default of `jax.make_mesh`); on a mesh with `Auto`
axes the placement is a compiler decision that is not visible while tracing,
so under `jit`, `grad` or `vmap` such inputs take the single-device path
(still correct: XLA partitions it as it sees fit, without the per-device
row streaming).
"""

import dataclasses
import functools
from collections.abc import Callable

import equinox as eqx
import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class RowSharding:
    """The rows of both clouds are split over mesh axis `axis` of `mesh`.

    Static (hashable): part of a coupling's tree structure, like `block_size`.
    """

    mesh: Mesh | AbstractMesh
    axis: str

    @property
    def size(self) -> int:
        """Number of devices along `axis`."""
        return self.mesh.shape[self.axis]

    @property
    def current_mesh(self) -> Mesh | AbstractMesh:
        """The mesh as the code being traced sees it: the context mesh when one
        is set (`jax.set_mesh`, or `auto_partitioned`, where its axes are
        `Auto`), else the clouds' own."""
        context = jax.sharding.get_abstract_mesh()
        return self.mesh if context.empty else context

    @property
    def explicit(self) -> bool:
        """Whether `axis` is an `Explicit` axis here (shardings are part of the types)."""
        mesh = self.current_mesh
        return mesh.axis_types[mesh.axis_names.index(self.axis)] == AxisType.Explicit

    @property
    def rows(self) -> P:
        """The partition spec of a per-point array: rows split, the rest whole."""
        return P(self.axis)

    def place(self, tree, spec: P):
        """`tree` with every leaf placed as `spec` over the mesh.

        On an `Explicit` axis this sets the leaves' types, which JAX checks:
        `shard_map` wants its inputs typed as its `in_specs`, a loop carry
        must keep its type. On an `Auto` axis it is a constraint for XLA.
        """
        sharding = NamedSharding(self.current_mesh, spec)
        if self.explicit:
            return jax.reshard(tree, sharding)
        return jax.lax.with_sharding_constraint(tree, sharding)


def _holds_sharding(z) -> bool:
    return isinstance(z, RowSharding) or isinstance(getattr(z, "sharding", None), RowSharding)


def auto_partitioned(fn: Callable) -> Callable:
    """Decorator for the jitted entry points: `fn` runs with the mesh's axes
    `Auto`, and its outputs are placed like its inputs.

    The library leaves the partitioning of its vector algebra to XLA and only
    the streaming passes are manual (`shard_map`, `_stream/engine.py`). On a mesh
    with `Explicit` axes JAX types every array by its sharding and rejects
    operations whose output sharding is ambiguous (a dot product of two
    sharded vectors, a QR of a sharded basis, ...), so `fn` runs as under
    `jax.sharding.auto_axes`. Outputs whose leading dimension is the number of
    points of a sharded input (or of a coupling argument) come back
    row-sharded; on an `Explicit` axis the others come back replicated.

    Applies when an argument holds a `RowSharding` (the argument itself, or a
    `Coupling` / `Config` / operator holding one); a no-op otherwise, and
    inside another `auto_partitioned` function.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        holders = jax.tree_util.tree_leaves((args, kwargs), is_leaf=_holds_sharding)
        holders = [z for z in holders if _holds_sharding(z)]
        if not holders:
            return fn(*args, **kwargs)
        sharding = holders[0] if isinstance(holders[0], RowSharding) else holders[0].sharding
        mesh = sharding.current_mesh
        dynamic, static = eqx.partition((args, kwargs), eqx.is_array)
        counts = {n for z in holders if hasattr(z, "shape") for n in z.shape}
        counts |= {
            leaf.shape[0] for leaf in jax.tree_util.tree_leaves(dynamic)
            if _row_axis_of(_named_sharding(leaf), leaf.ndim) == sharding.axis
        }
        if sharding.explicit:
            auto = mesh.abstract_mesh.update_axis_types(
                {name: AxisType.Auto for name in mesh.axis_names}
            )
            with jax.sharding.use_abstract_mesh(auto):
                args, kwargs = eqx.combine(jax.reshard(dynamic, P()), static)
                out = fn(*args, **kwargs)
        else:
            out = fn(*args, **kwargs)
        out_dynamic, out_static = eqx.partition(out, eqx.is_array)

        def place(leaf):
            if leaf.ndim and leaf.shape[0] in counts:
                return sharding.place(leaf, sharding.rows)
            # On an `Auto` axis XLA places the rest; an `Explicit` one needs a type.
            return sharding.place(leaf, P()) if sharding.explicit else leaf

        return eqx.combine(jax.tree_util.tree_map(place, out_dynamic), out_static)

    return wrapper


def _named_sharding(z) -> NamedSharding | None:
    """`z`'s `NamedSharding`, from its type when `z` is a tracer; `None` if not on a mesh."""
    if isinstance(z, jax.core.Tracer):
        sharding = jax.typeof(z).sharding
    else:
        sharding = getattr(z, "sharding", None)
    return sharding if isinstance(sharding, NamedSharding) else None


def _row_axis_of(sharding: NamedSharding | None, ndim: int):
    """The mesh axis (or tuple of axes) splitting the rows, `None` when they are whole."""
    if sharding is None or not ndim:
        return None
    spec = tuple(sharding.spec)
    rows = spec[0] if spec else None
    return rows[0] if isinstance(rows, tuple) and len(rows) == 1 else rows


def _row_axis(name: str, z) -> tuple[Mesh | AbstractMesh, str] | None:
    """`(mesh, axis)` when `z`'s rows are split over a mesh axis, `None` when `z` is whole."""
    sharding = _named_sharding(z)
    if sharding is None:
        return None
    rows = _row_axis_of(sharding, z.ndim)
    features = [entry for entry in tuple(sharding.spec)[1:] if entry is not None]
    if features:
        axis = rows if rows is not None else features[0]
        raise ValueError(
            f"`{name}` is sharded along its feature dimension (spec {sharding.spec}); only "
            f"the rows (points) may be split: place it with NamedSharding(mesh, P({axis!r}))."
        )
    if isinstance(rows, tuple):
        raise ValueError(
            f"`{name}`'s rows are sharded over several mesh axes {rows}; split them over "
            "one axis (reshape the mesh so that one axis holds those devices)."
        )
    return None if rows is None else (sharding.mesh, rows)


def _describe(mesh) -> str:
    """A mesh with its devices in order: two meshes with the same axis names
    and sizes print alike, and may still order their devices differently."""
    devices = getattr(mesh, "devices", None)
    if devices is None:
        return str(mesh)
    return f"{mesh} (devices {[d.id for d in np.ravel(devices)]})"


def check_split_like_clouds(sharding: "RowSharding | None", **arrays) -> None:
    """A `ValueError` naming the placement when one of `arrays` (weights,
    initial potentials; `None` values skipped) has its rows split while the
    clouds are whole (`sharding is None`): the split is read from the clouds,
    so split them the same way, or keep the array whole."""
    if sharding is not None:
        return
    for name, z in arrays.items():
        place = None if z is None else _row_axis(name, z)
        if place is not None:
            axis = place[1]
            raise ValueError(
                f"`{name}` has its rows split over mesh axis {axis!r}, but `x` and `y` are "
                "whole: the placement is read from the clouds. Split them the same way "
                f"(`jax.device_put(x, NamedSharding(mesh, P({axis!r})))`), or keep `{name}` "
                "whole."
            )


def row_sharding(**clouds) -> RowSharding | None:
    """How the point clouds (keyword arguments, named for the error messages)
    are split over devices.

    Each cloud is either row-sharded over one mesh axis, or whole (on one
    device, or replicated); at least one sharded cloud makes the whole
    computation sharded, and whole clouds are then split the same way. All
    sharded clouds must use the same mesh and axis, and every cloud's number
    of points must be divisible by the number of devices on that axis.

    **Returns:** a `RowSharding`, or `None` when no cloud is sharded.
    """
    placements = {name: _row_axis(name, z) for name, z in clouds.items()}
    found = {name: place for name, place in placements.items() if place is not None}
    if not found:
        return None
    (first, (mesh, axis)), *others = found.items()
    for name, (other_mesh, other_axis) in others:
        # A tracer's mesh is abstract: compare what both know.
        both_concrete = isinstance(mesh, Mesh) and isinstance(other_mesh, Mesh)
        same = other_mesh == mesh if both_concrete else (
            other_mesh.abstract_mesh == mesh.abstract_mesh
        )
        if not same or other_axis != axis:
            raise ValueError(
                f"`{first}` and `{name}` must have their rows sharded over the same mesh "
                f"axis, got axis {axis!r} of {_describe(mesh)} and axis {other_axis!r} of "
                f"{_describe(other_mesh)}."
            )
        if isinstance(mesh, AbstractMesh):  # a tracer's; keep a concrete mesh when there is one
            mesh = other_mesh
    sharding = RowSharding(mesh, axis)
    for name, z in clouds.items():
        shape = np.shape(z)
        if shape and shape[0] % sharding.size:  # a bad shape is reported by `check_points`
            raise ValueError(
                f"`{name}` has {shape[0]} points, which is not divisible by the "
                f"{sharding.size} devices of mesh axis {axis!r}: every device streams an "
                f"equal share of the rows. Use a number of points divisible by {sharding.size}, "
                "or keep the arrays on one device."
            )
    return sharding
