"""The models each target was last seen serving, kept in the state dir across restarts.

When a status endpoint fails (it hangs with the server, or answers garbage) the
canary is the only remaining evidence, and it needs a model. The last model a
successful poll listed is the best evidence of what is loaded: kept here, it
survives a daemon restart in the middle of a hang, so a server hung before the
daemon (re)started still gets canaries and its hang is seen.

Small JSON file, written atomically and only when a target's list changes;
a state dir that cannot be written costs only this memory (logged once).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from watchdog.logs import LogOnce

FILE_NAME = "known_models.json"
MAX_MODELS_KEPT = 16
"""More than this many models is a model zoo listed by a load-on-demand server, not what is loaded."""
_MAX_FILE_BYTES = 256 * 1024


class KnownModels:
    """Last known models per target; ``path`` None keeps them in memory only."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._models: dict[str, list[str]] = {}
        self._log = LogOnce("known_models")
        if path is not None:
            self._models = self._read(path)

    @classmethod
    def in_state_dir(cls, state_dir: str) -> KnownModels:
        return cls(Path(state_dir) / FILE_NAME)

    def get(self, target: str) -> list[str]:
        return list(self._models.get(target, []))

    def set(self, target: str, models: list[str]) -> None:
        models = [m for m in models if isinstance(m, str)][:MAX_MODELS_KEPT]
        if self._models.get(target) == models:
            return
        self._models[target] = models
        self._write()

    def _read(self, path: Path) -> dict[str, list[str]]:
        try:
            if path.stat().st_size > _MAX_FILE_BYTES:
                return {}
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as exc:
            self._log.problem("read", f"cannot read {path} ({type(exc).__name__}); starting without known models")
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            str(k): [m for m in v if isinstance(m, str)][:MAX_MODELS_KEPT]
            for k, v in data.items() if isinstance(v, list)
        }

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._models, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            self._log.problem("write", f"cannot write {self.path} ({exc.strerror}); known models kept in memory")
            return
        self._log.ok("write", f"{self.path} written again")
