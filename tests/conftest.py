"""Test setup: 8 fake CPU devices, and XLA's backend optimisation level 0 (the XLA flags must be
set before jax is imported).

XLA's compilation is about three quarters of the suite's time on a 2-core CPU (measured with
jax's compile-time events: ~1,500 s of backend compilation in a 1,050 s run of `tests/models` on
two workers, on a machine busy with other work).
Level 0 roughly halves it: `tests/models` ran in 189 s instead of 337 s, the whole suite (two
workers) in 864 s instead of 1,013 s; the compiled code runs slower, which the tests do not
measure (the end-to-end tests that train for longer gain less). The suite passes at both levels;
the benchmarks and experiments compile at the default level. ``JAXFLOWS_TEST_XLA_OPT=default``
runs the suite at the default level. Convolution gradients are the exception: at level 0 they run
about 50x slower, so the models built on convolutions compile their steps at the full level per
``jax.jit`` (``jaxflows.train.xla_options.full_backend_optimization``).
"""

import logging
import os

_flags = [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
if os.environ.get("JAXFLOWS_TEST_XLA_OPT", "0") != "default":
    _flags.append("--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = " ".join(f for f in _flags if f)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
import pytest  # noqa: E402

if os.environ.get("JAXFLOWS_TEST_REPLICA_PARALLEL", "0") != "1":
    # Orbax's replica-parallel save cuts every replicated array into per-device slices with
    # eager jax ops: on 8 fake CPU devices each first save of a model costs seconds of slice
    # dispatch and compilation (~5 s for a smoke STARFlow). The tests save each array from
    # one replica instead (the layout on disk is the same; Orbax does this by default on GPU).
    _absl = logging.getLogger("absl")  # silence Orbax's "overriding jax.Array" warning
    _level = _absl.level
    _absl.setLevel(logging.ERROR)
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    finally:
        _absl.setLevel(_level)


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
