"""Optional dependencies: imported where they are used, with an error that says which extra
to install.

``pip install sedna-sam`` (no extras) gives the converters (SSA -> Label Studio ->
TrainIds); Label Studio access, SAM, the edge worker and the cloud service each need an
extra (``setup.py``). A command that needs a missing package stops with
``pip install 'sedna-sam[<extra>]'`` instead of a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from sedna_sam.errors import SednaSamError


def need(module: str, extra: str, what: str = "") -> ModuleType:
    """Import ``module`` or fail with the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but broken: show the real error
        purpose = f" ({what})" if what else ""
        raise SednaSamError(
            f"this needs the Python package {module.split('.')[0]!r}{purpose}, which a plain "
            f"`pip install sedna-sam` leaves out: pip install 'sedna-sam[{extra}]'"
        ) from None
