"""An API key's secret never begins with '-' (services.console.auth.api_key_secret): pasted alone on a command line it
would be read as an option, and the CLI would answer "No such option" instead of saying what to give."""

from __future__ import annotations

import re

from services.console import auth


def test_secrets_never_begin_with_a_dash_and_keep_their_length_and_alphabet() -> None:
    # One in 64 of token_urlsafe's strings begins with '-': 2,000 draws without the redraw hold one but with a
    # probability of (63/64)**2000, about 1e-14.
    drawn = [auth.api_key_secret() for _ in range(2000)]
    assert not [s for s in drawn if s.startswith("-")]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", s) for s in drawn)
    assert len(set(drawn)) == len(drawn)
    assert any("-" in s for s in drawn)  # the dash is still among the other characters
