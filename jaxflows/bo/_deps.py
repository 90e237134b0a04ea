"""Optional dependencies of ``jaxflows.bo`` (the ``bo`` extra), imported with a readable error."""

from jaxflows.errors import UserError

try:
    import tinygp
except ImportError as e:  # pragma: no cover - depends on the environment
    raise UserError("jaxflows.bo needs tinygp, which is not installed",
                    hint="pip install 'jaxflows[bo]'") from e

__all__ = ["tinygp"]
