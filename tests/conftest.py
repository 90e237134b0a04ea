"""Test setup: 8 fake CPU devices (the XLA flag must be set before jax is imported)."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _check_devices():
    assert jax.device_count() == 8, f"expected 8 fake CPU devices, got {jax.device_count()}"
    yield


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def load_repo_module():
    """``load(relpath)``: imports a repository file that is a script, not a package module
    (``experiments/*.py``), once per session; its directory is on ``sys.path`` while it loads,
    as when it is run."""
    import importlib.util
    import sys

    loaded = {}

    def load(relpath: str):
        if relpath not in loaded:
            path = os.path.join(REPO, relpath)
            name = "repo_" + relpath.replace("/", "_").removesuffix(".py")
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses and pickling look their module up
            sys.path.insert(0, os.path.dirname(path))
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            finally:
                sys.path.remove(os.path.dirname(path))
            loaded[relpath] = module
        return loaded[relpath]

    return load
