"""config.load_cached: the policy tick reads the validated config from JSON; a stale cache is never used."""

from __future__ import annotations

import json
import os

import pytest

from conftest import FIXTURES, ROOT
from dashcam_helpers import config


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


def cached(cache_dir):
    with open(os.path.join(cache_dir, config.CACHE_NAME)) as f:
        return json.load(f)


def write_cache(cache_dir, data):
    with open(os.path.join(cache_dir, config.CACHE_NAME), "w") as f:
        json.dump(data, f)


def tamper(cache_dir, section, key, value):
    """Change a value inside the cache, keeping its key: shows whether the cache is what was used."""
    data = cached(cache_dir)
    data["config"][section][key] = value
    write_cache(cache_dir, data)


def test_the_cached_config_equals_the_loaded_one(make_config, cache_dir):
    path = str(make_config({"battery": {"voltage_table": [[3600, 100], [3200, 20]]}}))
    first = config.load_cached(path, cache_dir)
    second = config.load_cached(path, cache_dir)
    assert first == second == config.load(path)
    assert second.battery.voltage_table == ((3600, 100), (3200, 20))
    assert isinstance(second.ingest.globs, tuple)


def test_the_shipped_and_the_seed_config_survive_the_cache_with_their_warnings(cache_dir):
    for path in (ROOT / "etc/dashcam/config.yaml", FIXTURES / "seed-config.yaml"):
        config.load_cached(str(path), cache_dir)
        assert config.load_cached(str(path), cache_dir) == config.load(str(path))


def test_an_unchanged_file_is_served_from_the_cache(make_config, cache_dir):
    path = str(make_config())
    config.load_cached(path, cache_dir)
    tamper(cache_dir, "upload", "port", 2222)
    assert config.load_cached(path, cache_dir).upload.port == 2222


def test_an_edit_of_the_same_size_with_the_old_mtime_put_back_is_seen(make_config, cache_dir):
    path = make_config({"upload": {"port": 2200}})
    config.load_cached(str(path), cache_dir)
    st = os.stat(path)
    path.write_text(path.read_text().replace("2200", "2201"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as a tool that keeps mtimes would
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    assert config.load_cached(str(path), cache_dir).upload.port == 2201


def test_a_file_replaced_by_rename_is_seen(make_config, cache_dir, tmp_path):
    path = make_config({"upload": {"port": 2200}})
    config.load_cached(str(path), cache_dir)
    new = make_config({"upload": {"port": 2202}}, name="new.yaml")
    os.replace(new, path)
    assert config.load_cached(str(path), cache_dir).upload.port == 2202


def test_another_file_does_not_get_the_cache_of_the_first(make_config, cache_dir):
    a = make_config({"upload": {"port": 2200}}, name="a.yaml")
    b = make_config({"upload": {"port": 2203}}, name="b.yaml")
    assert config.load_cached(str(a), cache_dir).upload.port == 2200
    assert config.load_cached(str(b), cache_dir).upload.port == 2203


def test_a_cache_of_another_program_version_is_not_used(make_config, cache_dir):
    path = str(make_config())
    config.load_cached(path, cache_dir)
    tamper(cache_dir, "upload", "port", 2222)
    data = cached(cache_dir)
    data["key"][-1] = "0.0.0-older"
    write_cache(cache_dir, data)
    assert config.load_cached(path, cache_dir).upload.port == 22


def test_a_corrupt_or_foreign_cache_is_replaced(make_config, cache_dir):
    path = str(make_config())
    os.makedirs(cache_dir)
    for junk in ("{not json", '{"key": 1}', "[]", json.dumps({"key": config._cache_key(path), "warnings": [], "config": {"x": 1}})):
        with open(os.path.join(cache_dir, config.CACHE_NAME), "w") as f:
            f.write(junk)
        assert config.load_cached(path, cache_dir) == config.load(path)
    assert cached(cache_dir)["key"] == config._cache_key(path)


def test_a_broken_config_is_reported_even_with_a_cache_of_its_good_past(make_config, cache_dir):
    path = make_config()
    config.load_cached(str(path), cache_dir)
    path.write_text(path.read_text() + "thresholds:\n  shutdown_percent: 99\n")
    with pytest.raises(config.ConfigError):
        config.load_cached(str(path), cache_dir)


def test_without_a_cache_dir_or_a_writable_one_it_just_loads(make_config, tmp_path):
    path = str(make_config())
    assert config.load_cached(path, None) == config.load(path)
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    assert config.load_cached(path, str(blocker / "cache")) == config.load(path)


def test_the_cache_is_private(make_config, cache_dir):
    config.load_cached(str(make_config()), cache_dir)
    assert os.stat(os.path.join(cache_dir, config.CACHE_NAME)).st_mode & 0o077 == 0


@pytest.mark.parametrize("section", ["paths", "camera", "upload", "thresholds"])
@pytest.mark.parametrize("junk", ["x", 1, [1], None])
def test_a_cache_with_its_key_intact_and_a_section_gone_wrong_is_replaced(make_config, cache_dir, section, junk):
    # a bit flip on the card, a hand edit: the policy tick and the ignition watcher read the config
    # through the cache; a section that is no longer an object must not crash them at every start
    # (the cache is never rewritten while its key matches: no tick, no low-battery shutdown, no watcher).
    # null included: only an optional section (mqtt) may be absent; cfg.camera of None fails every tick
    path = str(make_config())
    config.load_cached(path, cache_dir)
    data = cached(cache_dir)
    data["config"][section] = junk
    write_cache(cache_dir, data)
    assert config.load_cached(path, cache_dir) == config.load(path)
    assert cached(cache_dir)["config"][section] != junk


# ---------------------------------------------------------------- the last good configuration (last_good=True)


def break_file(path, text="thresholds:\n  shutdown_percent: [oops\n"):
    """A typo over ssh: the file no longer parses (its stat changes, so the cache's key no longer matches)."""
    path.write_text(path.read_text() + text)


def test_a_broken_file_gives_the_units_the_last_good_configuration_with_its_problems(make_config, cache_dir):
    path = make_config({"thresholds": {"shutdown_percent": 7}})
    good = config.load_cached(str(path), cache_dir)
    before = cached(cache_dir)
    break_file(path)
    last = config.load_cached(str(path), cache_dir, last_good=True)
    assert last.thresholds.shutdown_percent == 7 and last.paths == good.paths
    assert len(last.broken) == 1 and "not valid YAML" in last.broken[0]
    assert good.broken == ()
    assert cached(cache_dir) == before  # the cache stays the last good one: the next tick finds it again
    assert config.load_cached(str(path), cache_dir, last_good=True).broken == last.broken
    with pytest.raises(config.ConfigError):  # every other command still refuses the file
        config.load_cached(str(path), cache_dir)


def test_a_file_whose_values_are_wrong_also_gives_the_last_good_one_with_every_problem(make_config, cache_dir):
    path = make_config()
    config.load_cached(str(path), cache_dir)
    break_file(path, "camera:\n  max_data_minutes: -1\ningest:\n  reserve_percent: .nan\n")
    last = config.load_cached(str(path), cache_dir, last_good=True)
    assert [p.split(":")[0] for p in last.broken] == ["camera.max_data_minutes", "ingest.reserve_percent"]


def test_once_the_file_is_fixed_it_is_used_again(make_config, cache_dir):
    path = make_config()
    config.load_cached(str(path), cache_dir)
    text = path.read_text()
    break_file(path)
    assert config.load_cached(str(path), cache_dir, last_good=True).broken
    path.write_text(text + "thresholds:\n  shutdown_percent: 9\n")
    fixed = config.load_cached(str(path), cache_dir, last_good=True)
    assert fixed.broken == () and fixed.thresholds.shutdown_percent == 9


@pytest.mark.parametrize("cache", [None, "{not json", json.dumps({"key": [], "warnings": [], "config": {"paths": 1}}),
                                   json.dumps({"key": [], "warnings": []})])
def test_without_a_usable_last_good_configuration_a_broken_file_is_refused(make_config, cache_dir, cache):
    path = make_config()
    if cache is not None:
        os.makedirs(cache_dir)
        with open(os.path.join(cache_dir, config.CACHE_NAME), "w") as f:
            f.write(cache)
    break_file(path)
    with pytest.raises(config.ConfigError):
        config.load_cached(str(path), cache_dir, last_good=True)
    with pytest.raises(config.ConfigError):
        config.load_cached(str(path), None, last_good=True)  # no cache directory at all


def test_an_unreadable_file_gives_the_last_good_configuration_too(make_config, cache_dir):
    path = make_config()
    config.load_cached(str(path), cache_dir)
    path.write_bytes(b"\xff\xfe not utf-8")
    assert "not UTF-8" in config.load_cached(str(path), cache_dir, last_good=True).broken[0]


def older(cache_dir, change):
    """The cache as an older version of the program left it: its key names that version, ``change``
    edits its config document."""
    data = cached(cache_dir)
    data["key"][-1] = "0.0.0-older"
    change(data["config"])
    write_cache(cache_dir, data)


@pytest.mark.parametrize("section, key, value", [
    ("thresholds", "shutdown_percent", "10"),  # another version's type: the tick would compare it to a percent
    ("thresholds", "shutdown_percent", 95),  # above disconnect_percent: never a configuration that loads
    ("budget", "capacity_wh", float("nan")),  # JSON takes NaN back
    ("battery", "voltage_table", [[3000, 100], [3400, 0]]),  # the steps upside down
    ("camera", "backend", "teleport"),
])
def test_a_last_good_configuration_that_does_not_validate_is_not_run_on(make_config, cache_dir, section, key, value):
    # the last good configuration is taken whatever the cache's key (the file changed): one left by
    # another version of the program, or damaged on the card, must still be one that validates now,
    # or the tick fails deep inside (no low-battery shutdown) or acts on values no file could hold
    path = make_config()
    config.load_cached(str(path), cache_dir)
    older(cache_dir, lambda c: c[section].__setitem__(key, value))
    break_file(path)
    with pytest.raises(config.ConfigError) as e:
        config.load_cached(str(path), cache_dir, last_good=True)
    assert "not valid YAML" in e.value.problems[0]  # the file's problems, as with no cache at all


def test_the_last_good_configuration_of_an_older_version_without_a_newer_key_gets_its_default(make_config, cache_dir):
    # unattended-upgrades installs a version with one more key (it has a default) while the file is
    # broken: the older cache still holds a configuration that validates, and the tick runs on it
    path = make_config({"thresholds": {"shutdown_percent": 7}})
    config.load_cached(str(path), cache_dir)
    older(cache_dir, lambda c: c["budget"].pop("event_percent"))
    break_file(path)
    last = config.load_cached(str(path), cache_dir, last_good=True)
    assert last.thresholds.shutdown_percent == 7 and last.broken
    assert last.budget.event_percent == config.load(str(make_config(name="fresh.yaml"))).budget.event_percent



def test_the_last_good_configuration_of_another_file_is_not_this_files(make_config, cache_dir):
    # DASHCAM_CONFIG changed for the units (a drop-in): the new file never loaded; the cache holds
    # the old file's configuration, which is no last good configuration of this one
    a = make_config({"upload": {"port": 2200}}, name="a.yaml")
    config.load_cached(str(a), cache_dir)
    b = make_config(name="b.yaml")
    break_file(b)
    with pytest.raises(config.ConfigError):
        config.load_cached(str(b), cache_dir, last_good=True)


@pytest.mark.parametrize("last_good", [False, True])
def test_a_cache_nested_too_deep_for_the_json_parser_is_replaced(make_config, cache_dir, last_good):
    # json raises RecursionError (not a ValueError) on it: it went past the command at every tick,
    # a good file and all (no low-battery shutdown, no watcher)
    path = str(make_config())
    os.makedirs(cache_dir)
    with open(os.path.join(cache_dir, config.CACHE_NAME), "w") as f:
        f.write("[" * 100000)
    assert config.load_cached(path, cache_dir, last_good=last_good) == config.load(path)
    assert cached(cache_dir)["key"] == config._cache_key(path)


@pytest.mark.parametrize("last_good", [False, True])
def test_a_cache_that_is_a_fifo_is_replaced_not_waited_on(make_config, cache_dir, last_good):
    # a FIFO in its place (no writer): opened as a file, it blocked the policy tick, the watcher and
    # the boot until systemd killed them, at every run (no low-battery shutdown); read as the
    # configuration file is read (non-blocking, a regular file only), it is one more cache to replace
    import subprocess
    import sys

    from conftest import SRC

    path = str(make_config())
    os.makedirs(cache_dir)
    os.mkfifo(os.path.join(cache_dir, config.CACHE_NAME))
    code = ("import sys; from dashcam_helpers import config; "
            "print(config.load_cached(sys.argv[1], sys.argv[2], last_good=sys.argv[3] == 'True').upload.port)")
    r = subprocess.run([sys.executable, "-c", code, path, cache_dir, str(last_good)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=30)
    assert r.returncode == 0 and r.stdout == "22\n", r.stderr
    assert cached(cache_dir)["key"] == config._cache_key(path)


@pytest.mark.parametrize("said", ["a string, not a list", [1, None, "kept"], None])
def test_the_warnings_of_a_last_good_configuration_are_strings_of_a_list_or_none(make_config, cache_dir, said):
    path = make_config()
    config.load_cached(str(path), cache_dir)
    older(cache_dir, lambda c: None)
    data = cached(cache_dir)
    data["warnings"] = said
    write_cache(cache_dir, data)
    break_file(path)
    last = config.load_cached(str(path), cache_dir, last_good=True)
    assert last.broken and last.warnings == (("kept",) if isinstance(said, list) else ())


@pytest.mark.parametrize("gone", ["deleted", "a directory", "a FIFO", "too big", "a symlink loop"])
def test_a_file_gone_or_not_a_file_gives_the_last_good_configuration(make_config, cache_dir, gone):
    # the units run without the file too (ConditionPathExists= on the file or this cache): a file
    # deleted or replaced by something that is no configuration is one more broken file
    path = make_config({"thresholds": {"shutdown_percent": 7}})
    config.load_cached(str(path), cache_dir)
    path.unlink()
    if gone == "a directory":
        path.mkdir()
    elif gone == "a FIFO":
        os.mkfifo(path)
    elif gone == "too big":
        path.write_bytes(b"#" * (config.MAX_BYTES + 1))
    elif gone == "a symlink loop":
        path.symlink_to(path)
    last = config.load_cached(str(path), cache_dir, last_good=True)
    assert last.thresholds.shutdown_percent == 7 and len(last.broken) == 1
