"""Configuration: load /etc/dashcam/config.yaml, validate it against schema.yaml, freeze it.

Every problem in a file is collected and reported at once, one line each, naming the
file and the key path. A valid file becomes a tree of frozen records, so the rest
of the program never guesses at defaults.
"""

from __future__ import annotations

import os
import re
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every policy tick
    from typing import Any, Dict, List, Optional, Sequence, Tuple

from .record import Record

DEFAULT_PATH = "/etc/dashcam/config.yaml"
ENV_VAR = "DASHCAM_CONFIG"
# a str, not a pathlib.Path: importing pathlib costs the policy tick more than the rest of this module
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.yaml")


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one line per mistake."""

    def __init__(self, path: str, problems: List[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


class Paths(Record):
    local_staging: str
    state_dir: str

    @property
    def ready(self) -> str:
        return os.path.join(self.local_staging, "ready")

    @property
    def incoming(self) -> str:
        return os.path.join(self.local_staging, "incoming")

    @property
    def ledger(self) -> str:
        return os.path.join(self.state_dir, "ledger.sqlite3")


class Camera(Record):
    name: str
    backend: str
    hub_location: str
    port_number: int
    data_device: Optional[str]
    mount_base: str
    record_script: Optional[str]
    data_script: Optional[str]
    off_script: Optional[str]
    after_ingest: str
    max_data_minutes: int
    max_data_minutes_external: int
    settle_minutes: int
    min_record_minutes: int
    record_start_seconds: int
    loss_min_seconds: int
    match_serial: Optional[str]
    match_vendor_model: Optional[str]
    match_fs_uuid: Optional[str]
    match_fs_label: Optional[str]
    match_usb_port: Optional[str]

    @property
    def authorized_device(self) -> str:
        """The USB device whose sysfs ``authorized`` attribute switches data."""
        return self.data_device or self.hub_location

    @property
    def usb_port(self) -> str:
        """The USB port path the camera is expected on, e.g. ``1-1.1``."""
        return self.match_usb_port or f"{self.hub_location}.{self.port_number}"


class Ingest(Record):
    globs: Tuple[str, ...]
    extensions: Tuple[str, ...]
    event_globs: Tuple[str, ...]
    newest_first: bool
    reserve_bytes: int
    reserve_percent: float
    after_date: Optional[str]


class Upload(Record):
    method: str
    host: str
    user: str
    port: int
    dest_path: str
    layout: str
    order: str
    ssh_key: str
    known_hosts: str
    bwlimit: int
    connect_timeout: int
    io_timeout: int
    keep_days: int
    cut_session_seconds: int
    alert_hours: int


class Battery(Record):
    source: str
    command: Optional[str]
    timeout_seconds: int
    voltage_table: Tuple[Tuple[int, int], ...]


class Thresholds(Record):
    disconnect_percent: int
    shutdown_percent: int
    hysteresis_percent: int
    shutdown_debounce: int
    unknown_low_minutes: int


class Budget(Record):
    enabled: bool
    capacity_wh: float
    load_watts: float
    margin_percent: int
    overhead_seconds: int
    read_bytes_per_second: int
    upload_bytes_per_second: int
    bytes_per_minute: int
    event_percent: float


class Poll(Record):
    mount_timeout_seconds: int
    upload_retries: int


class Tools(Record):
    uhubctl: str
    lifepo4wered_cli: str
    rsync: str
    ssh: str


class Mqtt(Record):
    enabled: bool
    host: str
    port: int
    tls: bool
    ca_file: Optional[str]
    username: Optional[str]
    password_file: Optional[str]
    discovery_prefix: str
    base_topic: Optional[str]
    client_id: Optional[str]
    keepalive: int
    expire_after: int
    notifications: bool


class Config(Record):
    path: str
    paths: Paths
    camera: Camera
    ingest: Ingest
    upload: Upload
    battery: Battery
    thresholds: Thresholds
    budget: Budget
    poll: Poll
    tools: Tools
    mqtt: Optional[Mqtt] = None  # optional section: None when absent or enabled: false
    warnings: Tuple[str, ...] = ()
    # the file's problems, when this is the last good configuration the units run on in its place
    # (load_cached(last_good=True)); () when it is the file's own
    broken: Tuple[str, ...] = ()


SECTION_CLASSES = {
    "paths": Paths,
    "camera": Camera,
    "ingest": Ingest,
    "upload": Upload,
    "battery": Battery,
    "thresholds": Thresholds,
    "budget": Budget,
    "poll": Poll,
    "tools": Tools,
    "mqtt": Mqtt,
}

_schema_cache: Optional[Dict[str, Any]] = None


def _yaml():
    import yaml  # imported on use: the policy tick should not pay for it when it can avoid it

    return yaml


def schema() -> Dict[str, Any]:
    global _schema_cache
    if _schema_cache is None:
        yaml = _yaml()
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with open(SCHEMA_PATH, encoding="utf-8") as f:
            _schema_cache = yaml.load(f, Loader=loader)
    return _schema_cache


def _unique_key_loader():
    """A safe YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""
    yaml = _yaml()
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc, valid-type]
        pass

    def construct_mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (line {seen[key]} and line {mark.line + 1})", mark
                )
            seen[key] = key_node.start_mark.line + 1
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    # A value YAML recognises but cannot build (2024-13-45 as a date, an int of more than 4300
    # digits) stays the text it was written as: the schema then refuses it by its key.
    for tag, build in (("tag:yaml.org,2002:timestamp", base.construct_yaml_timestamp),
                       ("tag:yaml.org,2002:int", base.construct_yaml_int)):
        def construct_or_text(loader, node, build=build):
            try:
                return build(loader, node)
            except (ValueError, OverflowError):
                return loader.construct_scalar(node)

        Loader.add_constructor(tag, construct_or_text)
    # YAML 1.1 reads 1:20 as the base-60 number 80 (and 1:20.5 as a float): a port written that way
    # is a mistake, never 80. The int and float resolvers without their sexagesimal forms leave
    # such a value a string, which the schema then refuses by its key.
    int_tag, float_tag = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (int_tag, float_tag)]
        for first, resolvers in base.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(int_tag, re.compile(
        r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"), list("-+0123456789"))
    Loader.add_implicit_resolver(float_tag, re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))
    return Loader


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else repr(value[:77]) + "..."
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    if isinstance(value, int) and not -INT_LIMIT <= value <= INT_LIMIT:
        return f"a number of {_digits(value)} digits"
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bounds(spec: Dict[str, Any]) -> str:
    lo, hi = spec.get("min"), spec.get("max")
    if lo is not None and hi is not None:
        return f" {lo}-{hi}"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def _check_value(key: str, value: Any, spec: Dict[str, Any], problems: List[str]) -> Any:
    """Check one value against its spec; return the normalised value (problems appended on error)."""
    kind = spec["type"]
    if value is None:
        if spec.get("nullable"):
            return None
        problems.append(f"{key}: must be set, got nothing (null)")
        return None
    if kind == "int" or kind == "number":
        ok = isinstance(value, int) and not isinstance(value, bool)
        if kind == "number":
            ok = ok or isinstance(value, float)
        noun = "an integer" if kind == "int" else "a number"
        if not ok:
            problems.append(f"{key}: must be {noun}{_bounds(spec)}, got {_show(value)}")
            return None
        if isinstance(value, float) and value - value != 0.0:  # NaN and ±Infinity compare false to every bound
            problems.append(f"{key}: must be a finite number{_bounds(spec)}, got {_show(value)}")
            return None
        if isinstance(value, int) and not -INT_LIMIT <= value <= INT_LIMIT:
            problems.append(f"{key}: must be {noun}{_bounds(spec)}, got a number of {_digits(value)} digits")
            return None
        if ("min" in spec and value < spec["min"]) or ("max" in spec and value > spec["max"]):
            problems.append(f"{key}: must be {noun}{_bounds(spec)}, got {_show(value)}")
            return None
        return value
    if kind == "date":
        return _check_date(key, value, problems)
    if kind == "glob":
        value = _check_value(key, value, {**spec, "type": "str"}, problems)
        return None if value is None else _check_glob(key, value, problems)
    if kind == "bool":
        if not isinstance(value, bool):
            problems.append(f"{key}: must be true or false, got {_show(value)}")
            return None
        return value
    if kind in ("str", "path"):
        if isinstance(value, int) and not isinstance(value, bool) and kind == "str":
            value = str(value)  # YAML reads a bare serial number or port like 12345 as an integer
        if not isinstance(value, str) or not value:
            problems.append(f"{key}: must be a non-empty {'path' if kind == 'path' else 'string'}, got {_show(value)}")
            return None
        if kind == "path" and not value.startswith("/"):
            problems.append(f"{key}: must be an absolute path, got {_show(value)}")
            return None
        if "choices" in spec and value not in spec["choices"]:
            problems.append(f"{key}: must be one of {', '.join(spec['choices'])}, got {_show(value)}")
            return None
        if "pattern" in spec and not re.fullmatch(spec["pattern"], value):
            problems.append(f"{key}: {_show(value)} is not valid ({spec['doc']})")
            return None
        return value
    if kind == "list":
        if not isinstance(value, list):
            problems.append(f"{key}: must be a list, got {_show(value)}")
            return None
        item_spec = {"type": spec["items"], "doc": spec["doc"]}
        before = len(problems)
        items = tuple(_check_value(f"{key}[{i}]", v, item_spec, problems) for i, v in enumerate(value))
        return items if len(problems) == before else None
    if kind == "table":
        if not isinstance(value, list) or not value:
            problems.append(f"{key}: must be a non-empty list of [millivolts, percent] pairs, got {_show(value)}")
            return None
        rows = []
        for i, row in enumerate(value):
            if (
                not isinstance(row, list)
                or len(row) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in row)
                or not 0 <= row[1] <= 100
                or row[0] <= 0
            ):
                problems.append(f"{key}[{i}]: must be a [millivolts, percent 0-100] pair of integers, got {row!r}")
                return None
            rows.append((row[0], row[1]))
        if any(a[0] <= b[0] for a, b in zip(rows, rows[1:])):
            problems.append(f"{key}: steps must be ordered from the highest voltage down")
            return None
        return tuple(rows)
    raise AssertionError(f"schema: unknown type {kind!r} for {key}")


# the largest int a key may hold: SQLite, struct and C take 64 bits; YAML and Python take any size
INT_LIMIT = 2**63 - 1


def _digits(value: int) -> int:
    """How many digits ``value`` has, without str() (which refuses more than 4300)."""
    return max(1, int(abs(value).bit_length() * 0.30103) + 1)


def _check_date(key: str, value: Any, problems: List[str]) -> Optional[str]:
    """A calendar date as YYYY-MM-DD: YAML's own date (2024-01-01 unquoted) or a string that is a
    real date ("2024-13-45" is not)."""
    import datetime

    if isinstance(value, datetime.datetime):  # 2024-01-01 10:00:00: a time too
        problems.append(f"{key}: must be a date (YYYY-MM-DD) without a time, got {value.isoformat(sep=' ')}")
        return None
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        try:
            return datetime.date.fromisoformat(value).isoformat()
        except ValueError as e:
            problems.append(f"{key}: {value!r} is not a date ({e})")
            return None
    problems.append(f"{key}: must be a date (YYYY-MM-DD), got {_show(value)}")
    return None


def _check_glob(key: str, value: str, problems: List[str]) -> Optional[str]:
    """A footage glob that compiles as ingest compiles it ("[z-a]" does not)."""
    if "[" not in value:  # only a bracket expression can fail to compile: the usual globs cost nothing
        return value
    from .footage import glob_regex  # only for a glob with brackets

    try:
        glob_regex(value)
    except re.error as e:
        problems.append(f"{key}: {value!r} is not a valid glob ({e})")
        return None
    return value


def _did_you_mean(word: str, known: List[str]) -> str:
    import difflib  # only for a mistake in the file: not on the path of a good one

    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"


def validate(raw: Any, path: str = "<config>") -> Config:
    """Validate parsed YAML; return a Config or raise ConfigError listing every problem."""
    problems: List[str] = []
    warnings: List[str] = []
    sch = schema()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, [f"the file must hold a mapping of sections, got {_show(raw)}"])
    for section in raw:
        if section not in sch:
            problems.append(f"{section}: unknown section{_did_you_mean(str(section), list(sch))}")
    sections: Dict[str, Any] = {}
    for section, sspec in sch.items():
        given = raw.get(section)
        if given is None and sspec.get("optional"):
            continue  # an optional section left out (or empty) is simply not used
        if given is None:
            given = {}
        if not isinstance(given, dict):
            problems.append(f"{section}: must be a mapping of keys, got {_show(given)}")
            given = {}
        keys = sspec["keys"]
        for key in given:
            if key not in keys:
                problems.append(f"{section}.{key}: unknown key{_did_you_mean(str(key), list(keys))}")
        values: Dict[str, Any] = {}
        for key, spec in keys.items():
            dotted = f"{section}.{key}"
            if "replaced_by" in spec:  # accepted, checked and warned about; kept nowhere
                if key in given:
                    _check_value(dotted, given[key], spec, problems)
                    warnings.append(f"{dotted}: no longer used; replaced by {spec['replaced_by']}")
                continue
            if key in given:
                values[key] = _check_value(dotted, given[key], spec, problems)
            elif spec.get("required"):
                problems.append(f"{dotted}: required ({spec['doc']})")
                values[key] = None
            else:
                default = spec.get("default")
                if spec["type"] == "list" and default is not None:
                    default = tuple(default)
                elif spec["type"] == "table" and default is not None:
                    default = tuple(tuple(r) for r in default)
                values[key] = default
        sections[section] = values
    _cross_checks(sections, problems)
    if problems:
        raise ConfigError(path, problems)
    built = {name: SECTION_CLASSES[name](**values) for name, values in sections.items()}
    for name in list(built):
        if is_optional_section(name) and not getattr(built[name], "enabled", True):
            built[name] = None  # present but switched off: the rest of the program sees no section
    return Config(path=path, warnings=tuple(warnings), **built)


def _cross_checks(s: Dict[str, Dict[str, Any]], problems: List[str]) -> None:
    t = s["thresholds"]
    if isinstance(t["shutdown_percent"], int) and isinstance(t["disconnect_percent"], int):
        if t["shutdown_percent"] >= t["disconnect_percent"]:
            problems.append(
                f"thresholds.shutdown_percent: must be below thresholds.disconnect_percent "
                f"({t['disconnect_percent']}), got {t['shutdown_percent']}"
            )
    cam = s["camera"]
    if cam["backend"] == "scripts":
        for key in ("record_script", "data_script", "off_script"):
            if cam[key] is None:
                problems.append(f"camera.{key}: required when camera.backend is scripts")
    layout = s["upload"].get("layout")
    if isinstance(layout, str):
        from .layout import layout_problems

        problems.extend(f"upload.layout: {layout!r} {p}" for p in layout_problems(layout))
    bat = s["battery"]
    if bat["source"] == "command" and bat["command"] is None:
        problems.append("battery.command: required when battery.source is command")
    _hidden_programs(s, problems)
    mq = s.get("mqtt")
    if mq is not None:
        if mq["password_file"] is not None and mq["username"] is None:
            problems.append("mqtt.password_file: needs mqtt.username (a broker takes a password only with a user)")
        if mq["ca_file"] is not None and mq["tls"] is False:
            problems.append("mqtt.ca_file: only used with TLS; set mqtt.tls: true")


def _hidden_programs(s: Dict[str, Dict[str, Any]], problems: List[str]) -> None:
    """A program a unit runs may not live where the units cannot see it (ProtectHome=yes)."""
    from .runner import hidden_from_units

    keys = [("battery", "command")] + [("camera", k) for k in ("record_script", "data_script", "off_script")]
    keys += [("tools", k) for k in s["tools"]]
    for section, key in keys:
        value = s[section].get(key)
        hidden = hidden_from_units(value) if isinstance(value, str) else None
        if hidden:
            problems.append(
                f"{section}.{key}: {value} is under {hidden}, which the services cannot see (their units run with "
                f"ProtectHome=yes); move it, e.g. to /usr/local/bin, and set {section}.{key} to the new path"
            )


def is_optional_section(section: str) -> bool:
    """True for a section the file may leave out (cfg.<section> is then None)."""
    return bool(schema()[section].get("optional"))


def config_path(explicit: Optional[str] = None) -> str:
    return explicit or os.environ.get(ENV_VAR) or DEFAULT_PATH


# a configuration is a few KiB; anything much larger is the wrong file (or an attack on the parser)
MAX_BYTES = 1024 * 1024


def read_text(path: str) -> str:
    """The file's text. Raises ConfigError, never blocks: opened non-blocking (a FIFO with no writer,
    a device), checked to be a regular file, and at most MAX_BYTES read."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(path, ["no such file (dashcamctl --config PATH or DASHCAM_CONFIG choose another)"])
    except PermissionError:
        raise ConfigError(path, ["permission denied (the file is readable by root and the dashcam group)"])
    except OSError as e:
        raise ConfigError(path, [f"cannot open: {e.strerror}"])
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file"
            )
            raise ConfigError(path, [f"is {kind}, not a regular file"])
        if st.st_size > MAX_BYTES:
            raise ConfigError(path, [f"is {st.st_size} bytes; a configuration is at most {MAX_BYTES} bytes"])
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_BYTES:  # it grew while being read
            raise ConfigError(path, [f"is more than {MAX_BYTES} bytes"])
    except OSError as e:
        raise ConfigError(path, [f"cannot read: {e.strerror}"])
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, [f"not UTF-8 text ({e.reason} at byte {e.start})"])


def load(path: Optional[str] = None) -> Config:
    """Read, parse and validate a config file. Raises ConfigError for every kind of failure."""
    path = config_path(path)
    text = read_text(path)
    yaml = _yaml()
    try:
        raw = yaml.load(text, Loader=_unique_key_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(e, "problem", None) or str(e)
        raise ConfigError(path, [f"{where}not valid YAML: {what}"])
    except RecursionError:
        raise ConfigError(path, ["not valid YAML: nested too deep"])
    except (ValueError, OverflowError) as e:  # e.g. an int of more than 4300 digits, a date like 2024-02-30
        raise ConfigError(path, [f"not valid YAML: {str(e)[:120]}"])
    return validate(raw, path)


def as_dict(cfg: Config) -> Dict[str, Any]:
    """The effective configuration (defaults filled in) as plain data, for --json output."""
    from .record import asdict_deep

    out = asdict_deep(cfg)
    out.pop("warnings", None)
    out.pop("broken", None)
    return out


# --- a cache of the validated configuration, for the policy tick -------------------------------
#
# The policy runs every 30 s on battery; parsing YAML (and importing the YAML module) costs
# more than the rest of a tick. The validated result is kept as JSON, keyed by everything
# that would change it: the file's identity and stat (device, inode, size, mtime and ctime
# in ns: ctime cannot be set back by a tool that restores mtimes), the version of the
# program and the stat of the schema and of this module. A cache whose key differs in any
# way is never used: the file is loaded and validated again and the cache rewritten.

CACHE_NAME = "config-cache.json"


def _cache_key(path: str) -> List[Any]:
    from . import __version__

    st = os.stat(path)
    key: List[Any] = [os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    for own in (SCHEMA_PATH, __file__):
        ost = os.stat(own)
        key += [ost.st_size, ost.st_mtime_ns]
    return key + [__version__]


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def from_dict(data: Dict[str, Any], path: str, warnings: Sequence[str] = ()) -> Config:
    """Rebuild a Config from as_dict() output (lists become the tuples validate() makes)."""
    # null only for a section the Config gives a default (mqtt): any other null is a broken cache
    # (AttributeError here, the cache replaced), not a cfg.camera of None failing every tick
    built = {
        name: None if data[name] is None and name in Config.__dict__ else cls(**{k: _frozen(v) for k, v in data[name].items()})
        for name, cls in SECTION_CLASSES.items()
    }
    return Config(path=path, warnings=tuple(warnings), **built)


def load_cached(path: Optional[str] = None, cache_dir: Optional[str] = None, last_good: bool = False) -> Config:
    """load(), through a JSON cache in ``cache_dir`` (None: no cache). Never returns a stale config,
    but for ``last_good``: a file that no longer loads (a typo over ssh, a half-written edit) gives
    the configuration the cache last held, its ``broken`` the file's problems (ConfigError when there
    is none). The units that keep the camera recording and the battery safe run on it until the file
    is fixed; every other command refuses the file."""
    path = config_path(path)
    if not cache_dir:
        return load(path)
    import json

    cache = os.path.join(cache_dir, CACHE_NAME)
    data: Any = None
    try:
        key = _cache_key(path)  # taken before the file is read: an edit during load only costs a reload
    except OSError:
        key = None  # the file is gone or unreadable: load() says what is wrong with it
    try:
        # read as the file is (non-blocking, a regular file, at most MAX_BYTES): a FIFO or a device
        # in its place would block every run of the units until systemd killed them
        data = json.loads(read_text(cache))
        if key is not None and data["key"] == key:
            return from_dict(data["config"], path, data["warnings"])
    except (ConfigError, OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        # no cache, an unreadable one, one from another version of the records, a section not an
        # object, one nested deeper than json recurses (RecursionError is no ValueError): replaced
        pass
    try:
        cfg = load(path)
    except ConfigError as e:
        if last_good:
            good = _last_good(data, path, e.problems)
            if good is not None:
                return good
        raise
    tmp = f"{cache}.{os.getpid()}.tmp"
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            json.dump({"key": key, "warnings": list(cfg.warnings), "config": as_dict(cfg)}, f)
        os.replace(tmp, cache)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return cfg


def _last_good(data: Any, path: str, problems: Sequence[str]) -> Optional[Config]:
    """The configuration a cache document holds, marked with the file's ``problems`` (None: none).

    Validated again, as the file would be: unlike a cache whose key matches, this one may have been
    left by another version of the program (a key it did not have gets its default, a value of
    another type or range is refused) or damaged on the card; a value no file could hold would
    fail the tick deep inside, and with it the low-battery shutdown."""
    try:
        if data["key"][0] != os.path.abspath(path):
            return None  # the configuration of another file: this one never loaded
        raw = {name: section for name, section in data["config"].items() if name != "path"}
        cfg = validate(raw, path)
        said = data["warnings"]  # the file's warnings when it loaded: the strings of a list, else none
        warnings = tuple(w for w in said if isinstance(w, str)) if isinstance(said, list) else ()
    except (ConfigError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None  # no cache, another file's, or one that does not validate now: nothing to run on
    return cfg.replace(warnings=warnings, broken=tuple(problems) or ("not loadable",))
