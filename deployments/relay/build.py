"""Build the relay Lambda's zip: ``relay.py`` at the root, nothing else.

    python deployments/relay/build.py [--output build/relay-lambda.zip]

The zip is reproducible (fixed timestamps and permissions), so an unchanged relay
gives a byte-identical zip and CloudFormation sees no change. Before writing, the
module is checked to import only the standard library and boto3 (the Lambda runtime
provides both); anything else would fail at cold start.
"""

from __future__ import annotations

import argparse
import ast
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULE = HERE / "relay.py"
DEFAULT_OUTPUT = HERE.parents[1] / "build" / "relay-lambda.zip"
ALLOWED = frozenset(sys.stdlib_module_names) | {"boto3", "botocore"}


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module ``source`` imports (absolute imports)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add("." * node.level + (node.module or ""))  # relative: never allowed
            elif node.module:
                names.add(node.module.split(".")[0])
    return names


def build(output: Path = DEFAULT_OUTPUT) -> Path:
    source = MODULE.read_text()
    foreign = sorted(imported_modules(source) - ALLOWED)
    if foreign:
        raise SystemExit(f"{MODULE} imports {', '.join(foreign)}: the Lambda ships alone and "
                         "may use only the standard library and boto3")
    output.parent.mkdir(parents=True, exist_ok=True)
    info = zipfile.ZipInfo("relay.py", date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(output, "w") as archive:
        archive.writestr(info, source)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    path = build(parser.parse_args().output)
    print(f"Wrote {path} ({path.stat().st_size} bytes; Lambda handler: relay.handler)")


if __name__ == "__main__":
    main()
