"""How many of verl's own launch scripts `tune new --from-verl` imports, and why the others do not.

Each script is imported as a user would (`tune new --from-verl SCRIPT --yes --dry-run`: every check,
nothing written) and sorted into: imported; refused only because its model is outside the catalogue
(issue 12 makes that a warning); out of scope (a vision-language model, Ascend NPUs, not a launch
script); refused for another reason (the first error is shown).

    python benchmarks/verl_import_coverage.py [DIR ...]   (default: tests/data/verl_scripts/*)
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIRS = sorted((REPO / "tests" / "data" / "verl_scripts").glob("*/"))
OUT_OF_SCOPE = ("tunecli's trainer is text-only", "tunecli has no NPU support", "has no `python3 -m verl.trainer")
MODEL_ERROR = "is neither a catalogue model"


def _errors(output: str) -> list[str]:
    lines = " ".join(output.split()).split("error: ")
    return [e.strip() for e in lines[1:] if not e.startswith(("1 check", "2 check", "3 check", "4 check"))]


def classify(script: Path) -> tuple[str, str]:
    """(outcome, detail) for one script: imported | model | out of scope | refused."""
    from tunecli.cli import app

    result = CliRunner().invoke(app, ["new", "--from-verl", str(script), "--yes", "--dry-run"],
                                env={"COLUMNS": "200"}, catch_exceptions=False)
    if result.exit_code == 0:
        return "imported", ""
    errors = _errors(result.output) or [" ".join(result.output.split())[-300:]]
    if any(s in errors[0] for s in OUT_OF_SCOPE):
        return "out of scope", errors[0][:160]
    if all(MODEL_ERROR in e for e in errors):
        return "model", errors[0][:100]
    return "refused", next(e for e in errors if MODEL_ERROR not in e)[:300]


def main(dirs: list[Path]) -> int:
    for folder in dirs:
        scripts = sorted(folder.glob("*.sh"))
        outcomes = {s.name: classify(s) for s in scripts}
        counts = Counter(o for o, _ in outcomes.values())
        in_scope = len(scripts) - counts["out of scope"]
        print(f"\n## {folder.name}: {len(scripts)} scripts, {in_scope} text-model launch scripts")
        for name, (outcome, detail) in outcomes.items():
            print(f"- {outcome:12} {name}" + (f": {detail}" if detail else ""))
        print(f"imported {counts['imported']} of {in_scope} ({100 * counts['imported'] / max(in_scope, 1):.0f}%); "
              f"model outside the catalogue only: {counts['model']} (with them: "
              f"{100 * (counts['imported'] + counts['model']) / max(in_scope, 1):.0f}%); "
              f"refused otherwise: {counts['refused']}; out of scope: {counts['out of scope']}")
    return 0


if __name__ == "__main__":
    sys.exit(main([Path(a) for a in sys.argv[1:]] or DEFAULT_DIRS))
