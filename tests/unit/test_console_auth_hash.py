"""The hash the console verifies for an unknown user name (services.console.auth._DUMMY_HASH) is a constant written in
the code, not hashed at import; it must cost what a user's hash costs, or a wrong name would answer faster than a
wrong password."""

from __future__ import annotations

from argon2 import extract_parameters

from services.console import auth


def test_the_unknown_users_hash_has_the_parameters_of_the_users_hashes() -> None:
    assert extract_parameters(auth._DUMMY_HASH) == extract_parameters(auth.hash_password("Una-Password-Lunga-1"))
    assert extract_parameters(auth._DUMMY_HASH) == auth._HASHER._parameters
