"""Print the JSON Schema of the alert payload (``python -m watchdog.notify.schema``).

docs/alert.schema.json is this output; a test keeps the two in step and checks
real webhook payloads against it.
"""

from __future__ import annotations

import json

from watchdog.notify.alert import Alert


def schema() -> dict:
    body = Alert.model_json_schema(mode="serialization")
    body["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    body["$id"] = "https://github.com/inference-watchdog/inference-watchdog/docs/alert.schema.json"
    return body


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(schema_text(), end="")
