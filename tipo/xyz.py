"""Axes for the WebUI's built-in X/Y/Z plot script, as plain data and functions.

The plot copies ``p`` for each cell (a shallow ``copy(p)``, A1111 1.10 ``scripts/xyz_grid.py``
``cell``) and calls each axis' ``apply(p, value, values)``. Ours set a named value in
``p.tipo_overrides``, always a new dict (the copy shares the old one with the other cells);
``process()`` lays them over the control values (:func:`tipo.extension.parse_script_args`).
The plot script is found by its module name, ``xyz_grid.py``, among ``scripts.scripts_data``,
and gets our :class:`Axis` entries as its own ``AxisOption`` objects (:func:`register_axes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from tipo.args import TipoArgs, spec
from tipo.errors import InvalidArgument

__all__ = ["Axis", "AXES", "OVERRIDES_ATTR", "set_override", "overrides_of", "axis_values", "find_xyz_module", "register_axes"]

#: The attribute of ``p`` that holds the plot's TIPO values for one cell.
OVERRIDES_ATTR = "tipo_overrides"
_SWITCH = {"on": True, "off": False}


@dataclass(frozen=True)
class Axis:
    """One plot axis over one schema field; ``kind`` converts the typed values (the plot's own
    ``int``/``float`` ranges such as ``1-4`` and ``0.3-0.9 (4)`` work for numbers)."""

    field: str
    kind: type

    @property
    def label(self) -> str:
        name = "Enabled" if self.field == "enabled" else spec(self.field).label.removeprefix("TIPO ")
        return f"[TIPO] {name[:1].upper()}{name[1:]}"

    def choices(self) -> list[str] | None:
        if self.field == "enabled":
            return list(_SWITCH)
        found = spec(self.field).choices
        return list(found) if found is not None else None


AXES: tuple[Axis, ...] = (
    Axis("enabled", str), Axis("model", str), Axis("mode", str), Axis("tag_length", str),
    Axis("nl_length", str), Axis("temperature", float), Axis("seed", int),
)  # fmt: skip


def overrides_of(p: Any) -> dict[str, Any]:
    found = getattr(p, OVERRIDES_ATTR, None)
    return dict(found) if isinstance(found, Mapping) else {}


def set_override(p: Any, field: str, value: Any) -> None:
    """Give this cell's ``p`` the value: a new dict, never the one the other cells share."""
    setattr(p, OVERRIDES_ATTR, {**overrides_of(p), field: _SWITCH.get(value, value) if field == "enabled" else value})


def axis_values(axis: Axis, values: Iterable[Any]) -> None:
    """The plot's ``confirm``: every value of the axis checked against the schema before the
    first image, the bad ones named (the plot shows the error)."""
    problems = []
    for value in values:
        if axis.field == "enabled":
            if value not in _SWITCH:
                problems.append(f"{value!r} (on or off)")
            continue
        try:
            TipoArgs.from_dict({axis.field: value})
        except InvalidArgument as error:
            problems.append(str(error).removeprefix("invalid TIPO arguments: "))
    if problems:
        raise InvalidArgument(f"{axis.label}: " + "; ".join(problems))


def find_xyz_module(scripts_data: Sequence[Any]) -> Any | None:
    """The loaded module of the built-in X/Y/Z plot script (its module name is its file name)."""
    for data in scripts_data:
        module = getattr(data, "module", None)
        if getattr(getattr(data, "script_class", None), "__module__", "") == "xyz_grid.py" and module is not None:
            return module
    return None


def register_axes(module: Any, model_choices: Callable[[], list[str]] | None = None) -> int:
    """Append our axes to the plot script's ``axis_options`` (once: labels already there are
    skipped, so a UI reload adds nothing twice); returns how many were added."""
    axis_option = getattr(module, "AxisOption", None)
    options = getattr(module, "axis_options", None)
    if axis_option is None or not isinstance(options, list):
        return 0
    present = {getattr(option, "label", None) for option in options}
    added = 0
    for axis in AXES:
        if axis.label in present:
            continue
        choices = model_choices if axis.field == "model" else axis.choices if axis.choices() is not None else None
        options.append(axis_option(axis.label, axis.kind, _apply(axis.field), confirm=_confirm(axis), choices=choices))
        added += 1
    return added


def _apply(field: str) -> Callable[[Any, Any, Any], None]:
    return lambda p, value, _values: set_override(p, field, value)


def _confirm(axis: Axis) -> Callable[[Any, Any], None]:
    return lambda _p, values: axis_values(axis, values)
