"""Optional packages: import one for a feature, or say in one line what to install.

Every optional feature imports its package through :func:`require`, so a
missing package is a :class:`~storecomp.errors.MissingPackageError` (also an
ImportError) whose message names the feature, the package and the exact
``pip install`` that brings it, never a traceback from deep inside.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingPackageError

__all__ = ["INSTALL", "install_hint", "require"]

#: Top-level module -> (PyPI distribution, the storecomp extra that brings it).
INSTALL: dict[str, tuple[str, str]] = {
    "transformers": ("transformers", "transformers"),
    "matplotlib": ("matplotlib", "bench"),
    "rich": ("rich", "bench"),
    "tqdm": ("tqdm", "bench"),
    "obstore": ("obstore", "s3"),
    "fsspec": ("fsspec", "fsspec"),
    "s3fs": ("s3fs", "test"),
    "boto3": ("boto3", "s3"),  # S3Store.uploads / sweep_uploads (obstore cannot list or abort uploads)
    "pyarrow": ("pyarrow", "formats"),
    "zarr": ("zarr", "formats"),
    "safetensors": ("safetensors", "formats"),
    "prometheus_client": ("prometheus-client", "metrics"),
    "cryptography": ("cryptography", "crypto"),
}


def install_hint(module: str) -> str:
    """The command that installs ``module``'s package: ``pip install 'storecomp[extra]'`` (or ``pip install NAME``)."""
    top = module.split(".", 1)[0]
    dist, extra = INSTALL.get(top, (top, ""))
    return f"pip install '{dist}'" + (f" (or pip install 'storecomp[{extra}]')" if extra else "")


def require(module: str, feature: str) -> ModuleType:
    """``importlib.import_module(module)``, or MissingPackageError saying that ``feature`` needs it.

    A package that is installed but fails to import (a broken dependency of
    it) is also MissingPackageError, with the import's own message.
    """
    top = module.split(".", 1)[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = isinstance(e, ModuleNotFoundError) and (e.name or "").split(".", 1)[0] == top
        if missing:
            raise MissingPackageError(f"{feature} needs {top}: {install_hint(module)}", top, install_hint(module)) from None
        raise MissingPackageError(
            f"{feature}: {top} is installed but failed to import ({e}); reinstall it: {install_hint(module)}",
            top,
            install_hint(module),
        ) from None
