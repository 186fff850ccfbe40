"""``sharkcage lint PATH... [--format text|json|sarif] [--select CODES] [--ignore CODES]``.

CLI glue only: arguments, output formats and the exit code.  The analysis is
:mod:`sharkcage.lint`.  Exit codes: 0 clean, 1 findings, 2 bad usage (a path
that does not exist, an unknown rule code).

>>> import argparse
>>> p = argparse.ArgumentParser(); add_arguments(p)
>>> p.parse_args(["src", "--format", "json", "--ignore", "SC010"]).ignore
'SC010'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sharkcage.lint import RULES, Finding, lint_paths, parse_codes

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "rules:\n" + "\n".join(f"  {r.code}  {r.name}" for r in RULES.values()) + (
        "\n\nsuppress one line with `# sharkcage: noqa` or `# sharkcage: noqa[SC001,SC002]`."
        "\nexit status: 0 clean, 1 findings, 2 bad usage."
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (folders: every *.py below)")
    parser.add_argument("--format", choices=("text", "json", "sarif"), default="text", help="output format (default: text)")
    parser.add_argument("--select", metavar="CODES", help="comma-separated rule codes or prefixes to report (default: all)")
    parser.add_argument("--ignore", metavar="CODES", help="comma-separated rule codes or prefixes not to report")


def _error(message: str) -> int:
    print(f"sharkcage lint: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Lint ``args.paths`` and print the findings; 0 clean, 1 findings, 2 bad usage.

    >>> run(argparse.Namespace(paths=["no/such/dir"], format="text", select=None, ignore=None))
    2
    """
    try:
        select, ignore = parse_codes(args.select), parse_codes(args.ignore)
    except ValueError as exc:
        return _error(str(exc))
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        return _error("no such file or directory: " + ", ".join(missing))
    findings = lint_paths(args.paths, select=select, ignore=ignore)
    out = {"text": format_text, "json": format_json, "sarif": format_sarif}[args.format](findings)
    sys.stdout.write(out)
    if args.format == "text":
        files = len({f.path for f in findings})
        print(f"{len(findings)} finding(s) in {files} file(s)" if findings else "no sharks found", file=sys.stderr)
    return 1 if findings else 0


def format_text(findings: list[Finding]) -> str:
    """``path:line:col: CODE message`` then an indented hint line.

    >>> print(format_text([Finding("SC005", "set_start_method in library code", "a.py", 2, 1)]), end="")
    ... # doctest: +ELLIPSIS
    a.py:2:1: SC005 set_start_method in library code
        fix: sharkcage: `sharkcage.Pool(start_method="spawn")` chooses the method for that pool only | stdlib: ...
    """
    lines = []
    for f in findings:
        lines.append(f"{f.path}:{f.line}:{f.col}: {f.code} {f.message}")
        lines.append(f"    fix: sharkcage: {f.sharkcage_fix} | stdlib: {f.stdlib_fix}")
    return "\n".join(lines) + ("\n" if lines else "")


def format_json(findings: list[Finding]) -> str:
    """A JSON array of findings (``code, message, path, line, col, name, hint, fix``).

    >>> data = json.loads(format_json([Finding("SC010", "pool never closed", "a.py", 4, 5)]))
    >>> data[0]["code"], data[0]["line"], data[0]["col"], sorted(data[0]["fix"])
    ('SC010', 4, 5, ['sharkcage', 'stdlib'])
    """
    return json.dumps([f.to_dict() for f in findings], indent=2, ensure_ascii=False) + "\n"


def _uri(path: str) -> tuple[str, str | None]:
    """A relative URI against %SRCROOT% (the working directory) when possible, else an absolute one."""
    p = Path(path).resolve()
    try:
        rel = p.relative_to(Path.cwd().resolve())
    except ValueError:
        return p.as_uri(), None
    return rel.as_posix(), "%SRCROOT%"


def format_sarif(findings: list[Finding]) -> str:
    """SARIF 2.1.0, one run, every rule described, one result per finding.

    >>> log = json.loads(format_sarif([Finding("SC001", "pool at import", "job.py", 3, 8)]))
    >>> log["version"], log["runs"][0]["results"][0]["ruleId"]
    ('2.1.0', 'SC001')
    >>> log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]
    {'startLine': 3, 'startColumn': 8}
    """
    index = {code: i for i, code in enumerate(RULES)}
    rules = [
        {
            "id": r.code,
            "name": r.name,
            "shortDescription": {"text": r.name.replace("-", " ")},
            "fullDescription": {"text": r.summary},
            "help": {"text": f"sharkcage: {r.sharkcage_fix}\nstdlib: {r.stdlib_fix}"},
            "defaultConfiguration": {"level": "error" if r.code == "SC000" else "warning"},
            "properties": {"seeds": list(r.seeds)},
        }
        for r in RULES.values()
    ]
    results = []
    for f in findings:
        uri, base = _uri(f.path)
        artifact = {"uri": uri}
        if base:
            artifact["uriBaseId"] = base
        results.append(
            {
                "ruleId": f.code,
                "ruleIndex": index[f.code],
                "level": "error" if f.code == "SC000" else "warning",
                "message": {"text": f"{f.message}\nfix: {f.hint}"},
                "locations": [
                    {
                        "physicalLocation": {
                            "artifactLocation": artifact,
                            "region": {"startLine": f.line, "startColumn": f.col},
                        }
                    }
                ],
            }
        )
    from sharkcage import __version__

    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "sharkcage lint",
                        "version": __version__,
                        "rules": rules,
                    }
                },
                "originalUriBaseIds": {"%SRCROOT%": {"uri": Path.cwd().resolve().as_uri() + "/"}},
                "columnKind": "unicodeCodePoints",
                "results": results,
            }
        ],
    }
    return json.dumps(log, indent=2, ensure_ascii=False) + "\n"
