"""The services one bot is made of, by type, and each command's dependencies built from
them.

A command names what it uses in a small frozen Struct (``needs`` in its spec): each
field's type is a service (``audit: AuditTrail``, ``clock: Clock``). :meth:`provide`
fills it from the services the runtime registered, once, at start-up; a field whose type
was not registered is a programming error, reported with the command's name. So a
command reaches the services its signature shows and no others, and a test builds its
dependencies by hand from only those parts.
"""

from __future__ import annotations

import typing
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


class Services:
    def __init__(self) -> None:
        self._by_type: dict[type[Any], object] = {}

    def add(self, kind: type[Any], service: object) -> None:
        """Register ``service`` as the one ``kind`` (a class, or a protocol such as Clock:
        ``type[Any]`` because mypy refuses an abstract class for ``type[T]``)."""
        if kind in self._by_type:
            raise ValueError(f"a {kind.__name__} is registered already")
        self._by_type[kind] = service

    def get(self, kind: type[T]) -> T:
        try:
            return typing.cast(T, self._by_type[kind])
        except KeyError:
            raise LookupError(f"no {kind.__name__} is registered") from None

    def provide(self, needs: type[T], *, command: str = "") -> T:
        """An instance of the struct ``needs``, each field the registered service of
        the field's type."""
        if not (isinstance(needs, type) and issubclass(needs, msgspec.Struct)):
            raise TypeError(f"/{command}: needs={needs!r} is not a msgspec Struct")
        values: dict[str, object] = {}
        for field in msgspec.structs.fields(needs):  # types resolved, as get_type_hints does
            kind = field.type
            if kind not in self._by_type:
                raise LookupError(
                    f"/{command} needs {field.name}: {getattr(kind, '__name__', kind)}, "
                    "which the runtime does not provide"
                )
            values[field.name] = self._by_type[kind]
        return needs(**values)
