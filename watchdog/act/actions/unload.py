"""Force a model out of memory: Ollama's ``keep_alive: 0``. Whether the memory came back is
checked by the actor from the GPU records (the same NVML or simulated-GPU samples the
detectors read)."""

from __future__ import annotations

import httpx

from watchdog.act.actions.base import Outcome, brief

UNLOADABLE = frozenset({"ollama"})


async def request_unload(kind: str, url: str, model: str, *, timeout: float,
                         headers: dict[str, str] | None = None) -> Outcome:
    if kind not in UNLOADABLE:
        return Outcome("skipped", f"a {kind} server cannot unload a model on request")
    body = {"model": model, "keep_alive": 0}
    try:
        async with httpx.AsyncClient(timeout=timeout, headers=headers or {}) as client:
            response = await client.post(f"{url}/api/generate", json=body)
    except httpx.TimeoutException:
        return Outcome("timeout", f"unload of {model} not answered within {timeout:.0f} s")
    except httpx.HTTPError as exc:
        return Outcome("failed", f"unload of {model}: {brief(exc)}")
    if response.status_code >= 400:
        return Outcome("failed", f"unload of {model}: HTTP {response.status_code} {response.text[:160]}",
                       {"status": response.status_code})
    return Outcome("ok", f"unload of {model} accepted (keep_alive 0)", {"status": response.status_code})
