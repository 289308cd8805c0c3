"""The README names the console's pages as a user finds them in its menu: every entry of every role's menu."""

from __future__ import annotations

import re
from pathlib import Path

from services.console.auth import Principal
from services.console.labels import ROLE_LABELS
from services.console.web import _nav

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_names_every_page_of_every_roles_menu() -> None:
    said = re.search(r"Pages in Italian: (.*?); a JSON API", README.read_text(encoding="utf-8"), re.S)
    assert said, "README.md has no 'Pages in Italian: ...' sentence"
    named = " ".join(said.group(1).split())
    menus = {label for role in ROLE_LABELS for _, label in _nav(Principal("x", role, frozenset({"201"})))}
    assert "Istanze di flusso" in menus and "Utenti" in menus  # every role's menu was read
    assert sorted(label for label in menus if label not in named) == []
