"""The configuration schema, exhaustively: every key, every kind of mistake, every message names its key."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import FIXTURES, MINIMAL, ROOT, deep_merge
from dashcam_helpers import config
from dashcam_helpers.record import FrozenError, fields

SCHEMA = config.schema()
ALL_KEYS = [(s, k, spec) for s, sec in SCHEMA.items() for k, spec in sec["keys"].items()]
WRONG_TYPE = {
    "int": "ssh",
    "number": "five",
    "str": ["a", "list"],
    "path": "relative/path",
    "bool": "yes please",
    "list": "not-a-list",
    "table": "not-a-table",
    "date": "yesterday",
    "glob": ["a", "list"],
}


def problems_for(raw) -> list:
    with pytest.raises(config.ConfigError) as e:
        config.validate(raw, "test.yaml")
    return e.value.problems


# what an optional section needs besides the key under test, so that key's problem is the only one
OPTIONAL_SECTION_MINIMAL = {"mqtt": {"host": "broker.lan"}}


def with_key(section, key, value):
    base = deep_merge(MINIMAL, {section: OPTIONAL_SECTION_MINIMAL.get(section, {})})
    return deep_merge(base, {section: {key: value}})


def ids(params):
    return [f"{s}.{k}" for s, k, _ in params]


@pytest.mark.parametrize("section,key,spec", ALL_KEYS, ids=ids(ALL_KEYS))
def test_every_key_refuses_a_wrong_type_naming_the_key(section, key, spec):
    problems = problems_for(with_key(section, key, WRONG_TYPE[spec["type"]]))
    assert any(p.startswith(f"{section}.{key}") for p in problems), problems


RANGED = [(s, k, spec) for s, k, spec in ALL_KEYS if "min" in spec or "max" in spec]


@pytest.mark.parametrize("section,key,spec", RANGED, ids=ids(RANGED))
def test_every_bounded_key_refuses_values_out_of_range(section, key, spec):
    for bound, delta in (("min", -1), ("max", +1)):
        if bound in spec:
            value = spec[bound] + delta
            problems = problems_for(with_key(section, key, value))
            assert problems == [p for p in problems if p.startswith(f"{section}.{key}: must be")], problems
            assert str(value) in problems[0]


@pytest.mark.parametrize("section,key,spec", RANGED, ids=ids(RANGED))
def test_every_bounded_key_accepts_its_bounds(section, key, spec):
    for bound in ("min", "max"):
        if bound in spec:
            value = spec[bound]
            raw = with_key(section, key, value)
            if section == "thresholds":  # keep the cross-check shutdown < disconnect satisfied
                raw = deep_merge(raw, {"thresholds": {"shutdown_percent": 0, "disconnect_percent": 100}})
                raw["thresholds"][key] = value
                if raw["thresholds"]["shutdown_percent"] >= raw["thresholds"]["disconnect_percent"]:
                    continue
            config.validate(raw, "test.yaml")


REQUIRED = [(s, k, spec) for s, k, spec in ALL_KEYS if spec.get("required")]


@pytest.mark.parametrize("section,key,spec", REQUIRED, ids=ids(REQUIRED))
def test_every_required_key_is_reported_when_missing(section, key, spec):
    raw = with_key(section, key, "placeholder")
    del raw[section][key]
    assert problems_for(raw) == [f"{section}.{key}: required ({spec['doc']})"]


@pytest.mark.parametrize("section", list(SCHEMA))
def test_an_unknown_key_in_every_section_is_named(section):
    problems = problems_for(with_key(section, "no_such_key", 1))
    assert len(problems) == 1 and problems[0].startswith(f"{section}.no_such_key: unknown key"), problems


def test_an_unknown_section_is_named_with_a_suggestion():
    problems = problems_for(deep_merge(MINIMAL, {"uplaod": {"host": "x"}}))
    assert problems == ["uplaod: unknown section (did you mean 'upload'?)"]


def test_an_unknown_key_suggests_the_close_one():
    assert problems_for(with_key("upload", "prot", 22)) == ["upload.prot: unknown key (did you mean 'port'?)"]


CHOICES = [(s, k, spec) for s, k, spec in ALL_KEYS if "choices" in spec]


@pytest.mark.parametrize("section,key,spec", CHOICES, ids=ids(CHOICES))
def test_every_choice_key_lists_its_choices(section, key, spec):
    problems = problems_for(with_key(section, key, "bogus"))
    assert problems == [f"{section}.{key}: must be one of {', '.join(spec['choices'])}, got 'bogus'"]


PATTERNED = [(s, k, spec) for s, k, spec in ALL_KEYS if "pattern" in spec]


@pytest.mark.parametrize("section,key,spec", PATTERNED, ids=ids(PATTERNED))
def test_every_patterned_key_refuses_a_malformed_value(section, key, spec):
    problems = problems_for(with_key(section, key, "bad value; rm -rf /"))
    assert len(problems) == 1 and problems[0].startswith(f"{section}.{key}: 'bad value; rm -rf /' is not valid")


NOT_NULLABLE = [(s, k, spec) for s, k, spec in ALL_KEYS if not spec.get("nullable")]


@pytest.mark.parametrize("section,key,spec", NOT_NULLABLE, ids=ids(NOT_NULLABLE))
def test_keys_that_need_a_value_refuse_null(section, key, spec):
    assert problems_for(with_key(section, key, None)) == [f"{section}.{key}: must be set, got nothing (null)"]


def test_several_mistakes_are_all_reported_at_once():
    raw = deep_merge(
        MINIMAL,
        {
            "upload": {"port": "ssh", "bwlimit": -5},
            "thresholds": {"disconnect_percent": 150},
            "camera": {"backend": "magic"},
            "battery": {"source": "command"},
        },
    )
    problems = problems_for(raw)
    assert problems == [
        "camera.backend: must be one of uhubctl, scripts, got 'magic'",
        "upload.port: must be an integer 1-65535, got 'ssh'",
        "upload.bwlimit: must be an integer 0-1000000000, got -5",
        "thresholds.disconnect_percent: must be an integer 0-100, got 150",
        "battery.command: required when battery.source is command",
    ]


def test_shutdown_threshold_must_be_below_disconnect():
    raw = deep_merge(MINIMAL, {"thresholds": {"disconnect_percent": 20, "shutdown_percent": 30}})
    assert problems_for(raw) == [
        "thresholds.shutdown_percent: must be below thresholds.disconnect_percent (20), got 30"
    ]


def test_scripts_backend_needs_its_three_scripts():
    problems = problems_for(deep_merge(MINIMAL, {"camera": {"backend": "scripts", "data_script": "/bin/true"}}))
    assert problems == [
        "camera.record_script: required when camera.backend is scripts",
        "camera.off_script: required when camera.backend is scripts",
    ]


def test_voltage_table_must_be_pairs_ordered_from_the_top():
    assert problems_for(with_key("battery", "voltage_table", [[3200, 20], [3300, 60]])) == [
        "battery.voltage_table: steps must be ordered from the highest voltage down"
    ]
    assert problems_for(with_key("battery", "voltage_table", [[3200, 120]])) == [
        "battery.voltage_table[0]: must be a [millivolts, percent 0-100] pair of integers, got [3200, 120]"
    ]


def test_list_items_are_checked_one_by_one():
    assert problems_for(with_key("ingest", "extensions", ["mp4", 7.5])) == [
        "ingest.extensions[1]: must be a non-empty string, got 7.5"
    ]


def test_a_bare_number_is_accepted_where_a_string_is_expected():
    cfg = config.validate(with_key("camera", "match_serial", 12345))
    assert cfg.camera.match_serial == "12345"


def test_the_whole_file_must_be_a_mapping():
    assert problems_for(["a", "list"]) == ["the file must hold a mapping of sections, got a list"]
    assert problems_for(deep_merge(MINIMAL, {"camera": "usb"})) == ["camera: must be a mapping of keys, got 'usb'"]


def test_defaults_fill_every_key_and_the_result_is_frozen():
    cfg = config.validate(MINIMAL)
    assert cfg.upload.port == 22
    assert cfg.paths.state_dir == "/var/lib/dashcam"
    assert cfg.paths.ledger == "/var/lib/dashcam/ledger.sqlite3"
    assert cfg.battery.source == "lifepo4wered"
    assert cfg.battery.voltage_table[0] == (3650, 100)
    assert cfg.camera.usb_port == "1-1.1"
    assert cfg.camera.authorized_device == "1-1"
    assert "Normal/**" in cfg.ingest.globs
    with pytest.raises(FrozenError):
        cfg.upload.port = 2222  # type: ignore[misc]


def test_records_mirror_the_schema_one_to_one():
    for section, spec in SCHEMA.items():
        cls = config.SECTION_CLASSES[section]
        kept = [key for key, kspec in spec["keys"].items() if "replaced_by" not in kspec]  # retired keys: warned, not kept
        assert list(fields(cls)) == kept, section
    assert set(config.SECTION_CLASSES) == set(SCHEMA)


def test_every_key_has_a_doc_and_an_allowed_type():
    for section, key, spec in ALL_KEYS:
        assert spec.get("doc"), f"{section}.{key} has no doc"
        assert spec["type"] in WRONG_TYPE, f"{section}.{key}"
        if not spec.get("required") and not spec.get("nullable"):
            assert "default" in spec, f"{section}.{key} needs a default"


def test_the_seed_config_loads_with_warnings_naming_what_replaced_its_old_keys():
    cfg = config.load(str(FIXTURES / "seed-config.yaml"))
    assert cfg.upload.host == "192.168.1.203"
    assert cfg.upload.user == "camera_uploader"
    assert cfg.upload.ssh_key == "/etc/camera_service/id_rsa"
    assert cfg.camera.hub_location == "1-1" and cfg.camera.port_number == 1
    assert cfg.camera.mount_base == "/mnt/cam"
    assert cfg.paths.local_staging == "/var/lib/camera_service/staging"
    assert (cfg.thresholds.disconnect_percent, cfg.thresholds.shutdown_percent) == (50, 25)
    assert (cfg.poll.mount_timeout_seconds, cfg.poll.upload_retries) == (20, 3)
    assert cfg.warnings == (
        "paths.log_path: no longer used; replaced by the systemd journal (journalctl -t dashcam)",
        "poll.interval_seconds: no longer used; replaced by dashcam-policy.timer "
        "(OnUnitActiveSec=, set it in a drop-in: systemctl edit dashcam-policy.timer)",
    )


SHIPPED = ROOT / "etc" / "dashcam" / "config.yaml"
# optional sections ship present (every key documented) but switched off
SHIPPED_SWITCHED_OFF = {("mqtt", "enabled")}


def test_the_shipped_config_is_valid_and_spells_out_every_default():
    cfg = config.load(str(SHIPPED))
    assert cfg.warnings == ()
    raw = yaml.safe_load(SHIPPED.read_text())
    for section, key, spec in ALL_KEYS:
        if "replaced_by" in spec:
            continue
        assert key in raw[section], f"{section}.{key} missing from the shipped config"
        if (section, key) in SHIPPED_SWITCHED_OFF:
            continue
        if not spec.get("required"):
            default = spec.get("default")
            assert raw[section][key] == default, f"{section}.{key}: shipped {raw[section][key]!r}, default {default!r}"


def test_the_shipped_config_publishes_nothing_until_mqtt_is_switched_on():
    cfg = config.load(str(SHIPPED))
    assert cfg.mqtt is None
    raw = yaml.safe_load(SHIPPED.read_text())
    assert raw["mqtt"]["enabled"] is False
    raw["mqtt"]["enabled"] = True
    on = config.validate(raw, "switched-on.yaml")
    assert on.mqtt is not None and on.mqtt.host == raw["mqtt"]["host"] and on.mqtt.port == 1883


def test_an_absent_or_disabled_mqtt_section_means_no_mqtt():
    assert config.validate(MINIMAL).mqtt is None
    assert config.validate(deep_merge(MINIMAL, {"mqtt": None})).mqtt is None
    assert config.validate(deep_merge(MINIMAL, {"mqtt": {"host": "b", "enabled": False}})).mqtt is None
    cfg = config.validate(deep_merge(MINIMAL, {"mqtt": {"host": "b"}}))
    assert (cfg.mqtt.discovery_prefix, cfg.mqtt.base_topic, cfg.mqtt.notifications) == ("homeassistant", None, False)


def test_an_mqtt_section_without_a_host_says_so():
    assert problems_for(deep_merge(MINIMAL, {"mqtt": {"port": 8883}})) == [
        f"mqtt.host: required ({SCHEMA['mqtt']['keys']['host']['doc']})"
    ]


def test_mqtt_settings_that_would_be_ignored_are_refused():
    raw = deep_merge(MINIMAL, {"mqtt": {"host": "b", "password_file": "/etc/dashcam/mqtt.pw", "ca_file": "/etc/ca.pem"}})
    assert problems_for(raw) == [
        "mqtt.password_file: needs mqtt.username (a broker takes a password only with a user)",
        "mqtt.ca_file: only used with TLS; set mqtt.tls: true",
    ]


def test_every_key_of_the_shipped_config_has_a_comment_above_it():
    lines = SHIPPED.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^  ([a-z0-9_]+):", line)
        if m:
            j = i - 1
            while j >= 0 and re.match(r"^  [a-z0-9_]+:", lines[j]):  # keys documented together
                j -= 1
            assert lines[j].lstrip().startswith("#"), f"no comment above {m.group(1)}"


def test_the_man_page_documents_every_key():
    page = (ROOT / "debian" / "dashcamctl.8").read_text()
    for section, key, _ in ALL_KEYS:
        assert f"{section}.{key}" in page.replace("\\&", ""), f"{section}.{key} not in dashcamctl.8"


def readme_reference_row(section, key, spec):
    """The row of README's Configuration reference for one key: key, default, the schema's doc."""
    default = spec.get("default")
    if spec.get("required"):
        shown = "*required*"
    elif default is None:
        shown = "not set"
    elif isinstance(default, bool):
        shown = f"`{str(default).lower()}`"
    elif isinstance(default, (list, dict)):
        text = json.dumps(default)
        shown = f"`{text}`" if len(text) <= 40 else "(see the shipped file)"
    else:
        shown = f"`{default}`"
    doc = f"no longer used: {spec['replaced_by']}" if spec.get("replaced_by") else spec.get("doc", "").strip()
    return f"| `{section}.{key}` | {shown} | {doc.replace('|', chr(92) + '|')} |"


def test_the_readme_reference_gives_every_key_its_default_and_doc():
    readme = (ROOT / "README.md").read_text()
    reference = readme[readme.index("\n## Configuration reference\n"):]
    reference = reference[:reference.index("\n## ", 1)]
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    expected = [readme_reference_row(section, key, spec) for section, key, spec in ALL_KEYS]
    assert [r for r in expected if r not in rows] == [], "README, Configuration reference: update these rows"
    assert len(rows) == len(expected), "README, Configuration reference: a row for a key the schema does not have"


def test_yaml_syntax_errors_name_the_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("upload:\n  host: [unclosed\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(str(p))
    assert len(e.value.problems) == 1 and "not valid YAML" in e.value.problems[0]
    assert re.match(r"line \d+, column \d+: ", e.value.problems[0])


def test_a_key_given_twice_is_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("upload:\n  host: a\n  user: b\n  dest_path: c\n  host: d\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(str(p))
    assert "key 'host' appears twice (line 2 and line 5)" in e.value.problems[0]


def test_a_missing_file_is_one_clear_problem(tmp_path):
    with pytest.raises(config.ConfigError) as e:
        config.load(str(tmp_path / "nope.yaml"))
    assert e.value.problems[0].startswith("no such file")


def test_an_empty_file_reports_the_required_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("")
    with pytest.raises(config.ConfigError) as e:
        config.load(str(p))
    assert [x.split(":")[0] for x in e.value.problems] == ["upload.host", "upload.user", "upload.dest_path"]


def test_config_path_prefers_the_option_then_the_environment(monkeypatch):
    monkeypatch.delenv("DASHCAM_CONFIG", raising=False)
    assert config.config_path() == "/etc/dashcam/config.yaml"
    monkeypatch.setenv("DASHCAM_CONFIG", "/tmp/env.yaml")
    assert config.config_path() == "/tmp/env.yaml"
    assert config.config_path("/tmp/opt.yaml") == "/tmp/opt.yaml"


# ---------------------------------------------------------------- property: any value anywhere -> a config or exit 78 by key

import datetime  # noqa: E402

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

any_value = st.recursive(
    st.none() | st.booleans() | st.text(max_size=30)
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.dates() | st.datetimes()
    | st.sampled_from(["[z-a]", "-oProxyCommand", "1:20", "2024-13-45", "Normal/**", "**", "[", "]", "/abs/path", ".nan"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
some_keys = st.lists(st.sampled_from(ALL_KEYS), min_size=1, max_size=4)
def assert_keyed(problems, also=()):
    """Every problem is one short line that starts with the key it is about (section.key...)."""
    assert problems
    for p in problems:
        assert p.split(".")[0].split(":")[0] in SCHEMA or p.startswith(also), p
        assert len(p) < 400 and "\n" not in p, p


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(some_keys, st.lists(any_value, min_size=4, max_size=4))
def test_property_any_values_validate_or_fail_naming_their_key(keys, values):
    raw = MINIMAL
    for (section, key, _), value in zip(keys, values):
        raw = deep_merge(raw, with_key(section, key, value))
    try:
        cfg = config.validate(raw, "test.yaml")
    except config.ConfigError as e:
        assert_keyed(e.problems)
        return
    # accepted: check-config --json can print it (strict JSON), the policy's cache gives it back,
    # every number finite, every date a date
    import json

    from dashcam_helpers.strictjson import dumps

    data = json.loads(dumps(config.as_dict(cfg)), parse_constant=lambda name: pytest.fail(name))
    assert config.from_dict(data, "test.yaml", cfg.warnings) == cfg
    for section, key, spec in ALL_KEYS:
        section_cfg = getattr(cfg, section)
        if section_cfg is None or "replaced_by" in spec:  # a retired key is warned about, kept nowhere
            continue
        value = getattr(section_cfg, key)
        if isinstance(value, float):
            assert value - value == 0.0, (section, key, value)
        if spec["type"] == "date" and value is not None:
            datetime.date.fromisoformat(value)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(some_keys, st.lists(any_value, min_size=4, max_size=4))
def test_property_any_yaml_file_loads_or_fails_with_config_error(tmp_path, keys, values):
    raw = MINIMAL
    for (section, key, _), value in zip(keys, values):
        raw = deep_merge(raw, with_key(section, key, value))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    try:
        config.load(str(path))
    except config.ConfigError as e:
        assert_keyed(e.problems, also=("line ",))


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_property_any_bytes_as_a_config_file_load_or_fail_with_config_error(tmp_path, data):
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    try:
        config.load(str(path))
    except config.ConfigError as e:
        assert e.problems and all(len(p) < 400 for p in e.problems)
