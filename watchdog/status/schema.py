"""Print the JSON Schema of the status snapshot (``python -m watchdog.status.schema``).

docs/status.schema.json is this output; a test keeps the two in step.
"""

from __future__ import annotations

import json

from watchdog.status.model import StatusSnapshot


def schema_text() -> str:
    return json.dumps(StatusSnapshot.model_json_schema(mode="serialization"), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(schema_text(), end="")
