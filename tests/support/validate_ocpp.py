#!/usr/bin/env python3
"""Validates the OCPP fixture frames against the official OCPP JSON schemas.

The schemas come from the `ocpp` package (PyPI: ocpp; it ships the OCA JSON schemas for 1.6
and 2.0.1), validated with `jsonschema`. Each CALL payload is checked against the schema of
its action; each CALLRESULT against the action's response schema (matched by message id).

Usage: validate_ocpp.py FIXTURES_DIR
Exit: 0 all valid, 1 invalid frames (listed), 2 usage, 3 missing python dependencies.
"""

import glob
import json
import os
import sys
from datetime import datetime

try:
    import jsonschema
    import ocpp
except ImportError as e:  # the Rust test tells a missing dependency from a failure by exit 3
    print(f"missing dependency: {e.name} (pip install ocpp jsonschema)", file=sys.stderr)
    sys.exit(3)

OCPP_DIR = os.path.dirname(ocpp.__file__)
VERSIONS = {
    # fixture folder: (schema folder, request file suffix)
    "ocpp16j": ("v16/schemas", ""),
    "ocpp201": ("v201/schemas", "Request"),
}

checker = jsonschema.FormatChecker()


@checker.checks("date-time", raises=ValueError)
def is_datetime(value):
    # jsonschema checks date-time only with optional extras installed; do it here so the
    # check never silently turns off.
    if not isinstance(value, str):
        return True
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return "T" in value


def load_schema(folder, name):
    path = os.path.join(OCPP_DIR, folder, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = sys.argv[1]
    errors = []
    checked = 0
    for version, (folder, suffix) in VERSIONS.items():
        files = sorted(glob.glob(os.path.join(root, version, "*.jsonl")))
        if not files:
            errors.append(f"{version}: no fixture files under {root}/{version}")
        for path in files:
            pending = {}
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    where = f"{os.path.relpath(path, root)}:{lineno}"
                    frame = json.loads(line)["payload"]
                    if isinstance(frame, str):
                        frame = json.loads(frame)
                    kind = frame[0]
                    if kind == 2:
                        _, uid, action, payload = frame
                        schema_name, pending[uid] = action + suffix, action
                    elif kind == 3:
                        _, uid, payload = frame
                        action = pending.pop(uid, None)
                        if action is None:
                            errors.append(f"{where}: CALLRESULT {uid} answers no CALL")
                            continue
                        schema_name = action + "Response"
                    else:
                        continue
                    schema = load_schema(folder, schema_name)
                    if schema is None:
                        errors.append(f"{where}: no schema {folder}/{schema_name}.json")
                        continue
                    cls = jsonschema.validators.validator_for(schema)
                    for err in cls(schema, format_checker=checker).iter_errors(payload):
                        path_s = "/".join(str(p) for p in err.absolute_path)
                        errors.append(f"{where}: {schema_name}: /{path_s}: {err.message}")
                    checked += 1
    for e in errors:
        print(e, file=sys.stderr)
    print(f"validated {checked} OCPP payloads, {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
