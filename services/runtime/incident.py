"""An unexpected failure, as the operators are told of it: what did not get done, and a reference the help desk
finds in the logs (with the exception and its traceback), never the exception's own text. That text is Python's or
PostgreSQL's English (`UndefinedColumnError: column "x" does not exist`): it tells an operator nothing they can act
on, and it would stay in the instance's history for good. The console answers its own unexpected errors the same
way (services.console.app, `unexpected`)."""

from __future__ import annotations

import secrets


def incident_reference() -> str:
    """A short reference for one failure: 8 hex digits, upper case (the console's error pages use the same)."""
    return secrets.token_hex(4).upper()


def not_completed(what: str, reference: str, retry: str) -> str:
    """The Italian reason of an outcome an unexpected failure ended: `what` did not get done ("il caricamento non è
    stato completato"), `retry` says what the operator can do ("richieda di nuovo il caricamento del periodo")."""
    return (f"{what} per un errore interno della piattaforma (riferimento {reference}): {retry}; se l'errore si "
            "ripete, comunichi il riferimento all'assistenza.")
