"""Loads ``experiments/configs/NAME.py:ARG`` and applies ``--config.KEY=VALUE`` overrides.

Every problem is a :class:`jaxflows.errors.ConfigError` with one precise line: an unknown file,
row, key (with the closest valid keys), or a value of the wrong type.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable

import ml_collections

from jaxflows.errors import ConfigError


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Calls ``get_config(arg)`` of the file named by ``spec = 'path.py[:arg]'``.

    The file's own folder is on ``sys.path`` while it loads, so a config may import a sibling
    module (``from tarflow_recipe import official_recipe_config``). Any error in the file is a
    ConfigError naming ``file:line`` and the message.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist", hint="see experiments/configs/")
    module_name = "jaxflows_config_" + os.path.splitext(os.path.basename(path))[0]
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except SyntaxError as e:
            raise ConfigError(f"{e.filename or path}:{e.lineno}: {e.msg}") from None
        except Exception as e:  # noqa: BLE001  (any failure of the user's file, one line)
            raise ConfigError(f"{_where(e, path)}: {type(e).__name__}: {e}") from None
        if not hasattr(module, "get_config"):
            raise ConfigError(f"config file {path!r} has no get_config(arg) function")
        try:
            config = module.get_config(arg) if arg else module.get_config()
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: {e}") from None
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{_where(e, path)}: {type(e).__name__}: {e}") from None
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict")
    return config


def _where(error: BaseException, path: str) -> str:
    """``file:line`` of the innermost frame of ``error`` inside the config file ``path``."""
    target = os.path.abspath(path)
    where = path
    for frame in traceback.extract_tb(error.__traceback__):
        if os.path.abspath(frame.filename) == target:
            where = f"{path}:{frame.lineno}"
    return where


def _all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(_all_keys(v, full + "."))
    return keys


def parse_value(key: str, text: str, current):
    """Parses ``text`` into the type of ``current``; raises ConfigError on a mismatch."""
    if isinstance(current, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"config key {key} expects a bool (true/false), got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"config key {key} expects an int, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"config key {key} expects a float, got {text!r}") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)) or current is None:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if current is None:
                return text
            raise ConfigError(
                f"config key {key} expects a {type(current).__name__}, got {text!r}"
            ) from None
        if current is not None and not isinstance(value, (tuple, list)):
            raise ConfigError(f"config key {key} expects a sequence, got {text!r}")
        return tuple(value) if isinstance(current, tuple) else value
    raise ConfigError(f"config key {key} (a {type(current).__name__}) cannot be set from the CLI")


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Iterable[str]
) -> ml_collections.ConfigDict:
    """Applies ``['--config.a.b=1', ...]`` (or ``a.b=1``) to a copy of ``config``."""
    config = ml_collections.ConfigDict(config.to_dict())
    known = _all_keys(config)
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if text.startswith("config."):
            text = text[len("config.") :]
        key, eq, value = text.partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} is not of the form --config.KEY=VALUE")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "run with --help"
            raise ConfigError(f"unknown config key {key!r}", hint=hint)
        parent = config
        *path, leaf = key.split(".")
        for p in path:
            parent = parent[p]
        current = parent[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(f"config key {key!r} is a group; set one of its fields")
        with parent.unlocked():
            parent[leaf] = parse_value(key, value, current)
    return config


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads the config file, applies the overrides and checks it against the engine schema."""
    from jaxflows.train.config import base_config

    config = apply_overrides(load_config_file(spec), overrides)
    known = set(_all_keys(config))
    missing = [k for k in _all_keys(base_config()) if k not in known and not k.startswith("model.")]
    if missing:
        raise ConfigError(f"config {spec!r} lacks engine keys {missing[:5]}",
                          hint="start it from jaxflows.train.config.base_config()")
    return config
