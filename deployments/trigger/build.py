"""Build the trigger Lambda's zip: ``handler.py`` at the root, nothing else.

    python deployments/trigger/build.py [--output build/trigger-lambda.zip]

The zip is reproducible (fixed timestamps and permissions), so an unchanged
handler gives a byte-identical zip and CloudFormation sees no change. Before
writing, the handler is checked to import only the standard library and boto3
(the Lambda runtime provides both); anything else would fail at cold start.
"""

from __future__ import annotations

import argparse
import ast
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HANDLER = HERE / "handler.py"
DEFAULT_OUTPUT = HERE.parents[1] / "build" / "trigger-lambda.zip"
ALLOWED = frozenset(sys.stdlib_module_names) | {"boto3", "botocore"}


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module ``source`` imports (absolute imports)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def build(output: Path = DEFAULT_OUTPUT) -> Path:
    source = HANDLER.read_text()
    foreign = sorted(imported_modules(source) - ALLOWED)
    if foreign:
        raise SystemExit(f"{HANDLER} imports {', '.join(foreign)}: the Lambda ships alone and "
                         "may use only the standard library and boto3")
    output.parent.mkdir(parents=True, exist_ok=True)
    info = zipfile.ZipInfo("handler.py", date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(output, "w") as archive:
        archive.writestr(info, source)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    path = build(parser.parse_args().output)
    print(f"Wrote {path} ({path.stat().st_size} bytes; Lambda handler: handler.handler)")


if __name__ == "__main__":
    main()
