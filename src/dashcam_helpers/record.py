"""Small immutable records, declared like dataclasses, without the cost of dataclasses.

    class Reading(Record):
        source: str
        percent: Optional[int]
        reason: Optional[str] = None     # a class attribute is the default

Fields are the class's annotations, in order (a subclass appends its own). Records are
frozen: assignment raises FrozenError. They compare, hash and print by value, and offer
``replace()``, ``asdict()`` and ``fields()``.

Why not @dataclass: creating a dataclass generates and compiles code, about 1.5 ms per
class here (more on a Pi), and importing dataclasses pulls in inspect, ast and dis. The
policy tick runs every 30 s on battery and loads a few dozen such classes each time
(bench/policy measures it); a record class costs microseconds to create.
"""

from __future__ import annotations


class FrozenError(AttributeError):
    """Assignment to a field of a record."""


class Record:
    _fields: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = [name for name in cls.__dict__.get("__annotations__", {}) if not name.startswith("_")]
        cls._fields = tuple(cls._fields) + tuple(n for n in own if n not in cls._fields)

    def __init__(self, *args, **values):
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} values, got {len(args)}")
        for name, value in zip(fields, args):
            if name in values:
                raise TypeError(f"{type(self).__name__}() got {name} twice")
            values[name] = value
        set_ = object.__setattr__
        cls = type(self)
        for name in fields:
            if name in values:
                set_(self, name, values.pop(name))
            elif name in cls.__dict__ or any(name in b.__dict__ for b in cls.__mro__[1:]):
                set_(self, name, getattr(cls, name))  # the declared default
            else:
                raise TypeError(f"{cls.__name__}() missing field {name}")
        if values:
            raise TypeError(f"{cls.__name__}() got unknown field(s) {', '.join(sorted(values))}")

    def __setattr__(self, name, value):
        raise FrozenError(f"{type(self).__name__} is read-only: cannot set {name}")

    def __delattr__(self, name):
        raise FrozenError(f"{type(self).__name__} is read-only: cannot delete {name}")

    def astuple(self) -> tuple:
        return tuple(getattr(self, n) for n in self._fields)

    def asdict(self) -> dict:
        """The fields as a dict (one level; see ``asdict_deep`` for nested records)."""
        return {n: getattr(self, n) for n in self._fields}

    def replace(self, **values):
        return type(self)(**{**self.asdict(), **values})

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        return self.astuple() == other.astuple()

    def __hash__(self):
        return hash(self.astuple())

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self._fields)})"


def fields(record_or_class) -> tuple:
    return record_or_class._fields


def asdict_deep(value):
    """Records (and tuples/lists/dicts of them) as plain data, recursively."""
    if isinstance(value, Record):
        return {n: asdict_deep(getattr(value, n)) for n in value._fields}
    if isinstance(value, (list, tuple)):
        return [asdict_deep(v) for v in value]
    if isinstance(value, dict):
        return {k: asdict_deep(v) for k, v in value.items()}
    return value
