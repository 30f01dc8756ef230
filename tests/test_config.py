"""storecomp.config.IOOptions: defaults, STORECOMP_* variables, the TOML file, precedence, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storecomp.config import IOOptions
from storecomp.errors import ConfigError, StorecompError

ENV = {
    "engine": ("STORECOMP_ENGINE", "threads", "threads"),
    "queue_depth": ("STORECOMP_QUEUE_DEPTH", "128", 128),
    "threads": ("STORECOMP_THREADS", "3", 3),
    "split_bytes": ("STORECOMP_SPLIT_BYTES", "0x40000", 1 << 18),
    "align": ("STORECOMP_ALIGN", "512", 512),
    "direct": ("STORECOMP_DIRECT", " ON ", "on"),
    "io_path": ("STORECOMP_IO_PATH", "Bounce", "bounce"),
    "staging_bytes": ("STORECOMP_STAGING_BYTES", str(8 << 20), 8 << 20),
    "staging_slot_bytes": ("STORECOMP_STAGING_SLOT", str(1 << 20), 1 << 20),
    "max_open_files": ("STORECOMP_MAX_OPEN_FILES", "7", 7),
    "mapped": ("STORECOMP_MAPPED", " Off", "off"),
}


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "storecomp.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    o = IOOptions()
    assert (o.engine, o.direct, o.io_path) == ("auto", "auto", "auto")
    assert (o.queue_depth, o.split_bytes, o.align, o.max_open_files) == (64, 1 << 20, 4096, 256)
    assert o.threads >= 4
    assert IOOptions.load({}) == o


def test_every_field_has_a_variable() -> None:
    assert {f.name for f in dataclasses.fields(IOOptions)} == set(ENV)


@pytest.mark.parametrize("key", list(ENV))
def test_each_environment_variable_is_read(key: str) -> None:
    var, raw, value = ENV[key]
    o = IOOptions.load({var: raw})
    assert getattr(o, key) == value
    others = {k: getattr(o, k) for k in ENV if k != key}
    assert others == {k: getattr(IOOptions(), k) for k in ENV if k != key}


def test_load_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORECOMP_ENGINE", "threads")
    monkeypatch.setenv("STORECOMP_IO_PATH", "posix")
    monkeypatch.setenv("STORECOMP_QUEUE_DEPTH", "16")
    o = IOOptions.load()
    assert (o.engine, o.io_path, o.queue_depth) == ("threads", "posix", 16)


def test_toml_file_named_by_storecomp_config(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[io]\nengine = "threads"\nqueue_depth = 8\ndirect = "off"\n\n[other]\nx = 1\n')
    o = IOOptions.load({"STORECOMP_CONFIG": str(path)})
    assert (o.engine, o.queue_depth, o.direct) == ("threads", 8, "off")


def test_toml_without_io_table_gives_defaults(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[store]\nroot = '/data'\n")
    assert IOOptions.load({"STORECOMP_CONFIG": str(path)}) == IOOptions()


def test_precedence_overrides_then_environment_then_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[io]\nengine = "threads"\nqueue_depth = 8\nthreads = 5\n')
    env = {"STORECOMP_CONFIG": str(path), "STORECOMP_QUEUE_DEPTH": "16", "STORECOMP_THREADS": "6"}
    o = IOOptions.load(env, threads=7, engine=None)  # None overrides are ignored
    assert (o.engine, o.queue_depth, o.threads) == ("threads", 16, 7)


def test_options_are_immutable_and_replace_validates() -> None:
    o = IOOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.engine = "threads"  # type: ignore[misc]
    assert o.replace(queue_depth=2).queue_depth == 2 and o.queue_depth == 64
    with pytest.raises(ConfigError, match="queue_depth"):
        o.replace(queue_depth=0)


def test_load_has_no_hidden_state(tmp_path: Path) -> None:
    a = IOOptions.load({"STORECOMP_THREADS": "9"})
    b = IOOptions.load({})
    assert a.threads == 9 and b.threads == IOOptions().threads


# ---------------------------------------------------------------- malformed values


@pytest.mark.parametrize(
    "var,raw",
    [
        ("STORECOMP_QUEUE_DEPTH", "abc"),
        ("STORECOMP_THREADS", "1.5"),
        ("STORECOMP_SPLIT_BYTES", "1M"),
        ("STORECOMP_MAX_OPEN_FILES", ""),
    ],
)
def test_non_integer_variable_names_the_variable(var: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        IOOptions.load({var: raw})
    assert var in str(info.value) and repr(raw) in str(info.value)


@pytest.mark.parametrize(
    "var,raw",
    [
        ("STORECOMP_ENGINE", "spdk"),
        ("STORECOMP_DIRECT", "maybe"),
        ("STORECOMP_IO_PATH", "nvme"),
        ("STORECOMP_QUEUE_DEPTH", "0"),
        ("STORECOMP_THREADS", "-2"),
        ("STORECOMP_ALIGN", "1000"),
        ("STORECOMP_SPLIT_BYTES", "1000"),
        ("STORECOMP_MAPPED", "on"),
    ],
)
def test_invalid_variable_value_names_the_variable(var: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        IOOptions.load({var: raw})
    assert var in str(info.value)


@pytest.mark.parametrize(
    "var,raw,key",
    [
        ("STORECOMP_ENGINE", "spdk", "engine"),
        ("STORECOMP_QUEUE_DEPTH", "0", "queue_depth"),
        ("STORECOMP_ALIGN", "1000", "align"),
    ],
)
def test_invalid_variable_value_is_a_config_error_naming_the_key(var: str, raw: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        IOOptions.load({var: raw})


@pytest.mark.parametrize(
    "body,key",
    [
        ('engine = "spdk"', "engine"),
        ('queue_depth = "64"', "queue_depth"),
        ("threads = 0", "threads"),
        ("threads = true", "threads"),
        ("align = 3000", "align"),
        ("split_bytes = 1.5", "split_bytes"),
        ('io_path = "nvme"', "io_path"),
    ],
)
def test_invalid_file_value_names_file_and_key(tmp_path: Path, body: str, key: str) -> None:
    path = write_toml(tmp_path, f"[io]\n{body}\n")
    with pytest.raises(ConfigError) as info:
        IOOptions.load({"STORECOMP_CONFIG": str(path)})
    assert str(path) in str(info.value) and f"[io].{key}" in str(info.value)


def test_unknown_key_in_io_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[io]\nengine = 'threads'\nqueue_dept = 8\n")
    with pytest.raises(ConfigError) as info:
        IOOptions.load({"STORECOMP_CONFIG": str(path)})
    msg = str(info.value)
    assert str(path) in msg and "'queue_dept'" in msg and "queue_depth" in msg  # lists the known keys


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[io\nengine = 'threads'\n")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        IOOptions.load({"STORECOMP_CONFIG": str(path)})
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        IOOptions.load({"STORECOMP_CONFIG": str(tmp_path / "nope.toml")})
    assert "STORECOMP_CONFIG" in str(info.value)


def test_io_that_is_not_a_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "io = 5\n")
    with pytest.raises(ConfigError, match=r"\[io\]"):
        IOOptions.load({"STORECOMP_CONFIG": str(path)})


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path)):
        IOOptions.load({"STORECOMP_CONFIG": str(tmp_path)})


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match="split_bytes"):
        IOOptions(split_bytes=4096, align=8192)
    with pytest.raises(ConfigError, match="staging_slot_bytes"):
        IOOptions(staging_bytes=1 << 20, staging_slot_bytes=2 << 20)
    with pytest.raises(ConfigError, match="staging_slot_bytes"):
        IOOptions(staging_slot_bytes=5000)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, StorecompError) and issubclass(ConfigError, ValueError)


@given(st.text(max_size=12))
def test_any_engine_string_is_accepted_or_a_config_error(raw: str) -> None:
    try:
        o = IOOptions.load({"STORECOMP_ENGINE": raw})
    except ConfigError:
        assert raw.strip().lower() not in ("auto", "io_uring", "threads")
    else:
        assert o.engine == raw.strip().lower()


@given(st.text(alphabet="0123456789abcdefxX-+_ ", max_size=10))
def test_any_integer_string_is_accepted_or_a_config_error(raw: str) -> None:
    try:
        o = IOOptions.load({"STORECOMP_MAX_OPEN_FILES": raw})
    except ConfigError:
        pass
    else:
        assert o.max_open_files == int(raw.strip(), 0) > 0
