"""inference-watchdog: a supervisor for self-hosted LLM inference servers.

Note: the import name ``watchdog`` is shared with the unrelated PyPI package
``watchdog`` (filesystem events). Install this project in its own virtual
environment (``scripts/install.sh`` does) so the two never meet.
"""

__version__ = "0.1.0"

import sys as _sys

# httpx imports its own command-line client (rich, pygments, click: about 6 MB and 50 ms) at
# import whenever those happen to be installed, and they are: we depend on rich and click. We
# never run httpx's CLI, so that import is refused; httpx then defines a stub ``main`` instead
# (issue 15: the daemon's footprint). Harmless if httpx was imported before us.
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
