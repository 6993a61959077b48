"""inference-watchdog: a supervisor for self-hosted LLM inference servers.

Note: the import name ``watchdog`` is shared with the unrelated PyPI package
``watchdog`` (filesystem events). Install this project in its own virtual
environment (``scripts/install.sh`` does) so the two never meet.
"""

__version__ = "0.1.0"
