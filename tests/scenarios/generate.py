"""Write scenario traces and their expectation files: ``python -m tests.scenarios.generate OUT [--seeds N]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tests.scenarios.catalog import SCENARIOS, Scenario
from watchdog.trace.io import write_trace


def write_scenario(scenario: Scenario, out: Path, seed: int) -> Path:
    stem = f"gen-{scenario.name}-{seed}"
    trace = out / f"{stem}.trace.jsonl"
    write_trace(trace, scenario.header, scenario.records)
    expect = dict(scenario.expect, trace=trace.name, source="tests/scenarios (synthetic)")
    (out / f"{stem}.expect.json").write_text(json.dumps(expect, indent=1) + "\n")
    return trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        for seed in range(args.seeds):
            print(write_scenario(build(seed), args.out, seed))


if __name__ == "__main__":
    main()
