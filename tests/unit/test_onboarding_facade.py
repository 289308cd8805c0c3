"""Issue 11 item 5: the onboarding service's clients (the CLI, the console) go through its one door,
services/onboarding/facade.py, and never import its rooms (domain, handlers, projection, switch...)."""

from __future__ import annotations

import ast
from pathlib import Path

from services.onboarding import facade

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ("services/cli", "services/console")
DOOR = "services.onboarding.facade"


def past_the_door(source: str) -> list[str]:
    """The onboarding modules `source` imports other than the facade."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != "services.onboarding" else [
                f"services.onboarding.{alias.name}" for alias in node.names]
        else:
            continue
        found += [n for n in names if n.split(".")[:2] == ["services", "onboarding"] and n != DOOR]
    return found


def test_the_check_sees_an_import_past_the_door() -> None:
    assert past_the_door("from services.onboarding import domain, handlers") == [
        "services.onboarding.domain", "services.onboarding.handlers"]
    assert past_the_door("def f():\n    from services.onboarding.projection import dashboard\n") == [
        "services.onboarding.projection"]
    assert past_the_door("import services.onboarding.switch") == ["services.onboarding.switch"]
    assert past_the_door("from services.onboarding import facade as onboarding") == []
    assert past_the_door("from services.onboarding.facade import SwitchSlot") == []


def test_the_cli_and_the_console_import_only_the_facade() -> None:
    found = []
    for folder in CLIENTS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += [f"{path.relative_to(ROOT)}: {name}" for name in past_the_door(path.read_text())]
    assert found == [], "onboarding internals imported by a client:\n" + "\n".join(found)


def test_the_facade_exports_what_it_names() -> None:
    missing = [name for name in facade.__all__ if not hasattr(facade, name)]
    assert missing == []
    assert facade.__all__ == sorted(facade.__all__)
