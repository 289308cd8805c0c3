"""The gateway's key pairs: the current one, which new seals use, and the retired ones, kept only
while a stored box still needs them.

Layout of the keys folder (`Settings.keys_dir`, on the gateway's host):

    ts_gateway_public.pem           current public key: `flows send-730` seals to it
    ts_gateway_private.pem          current private key (0600)
    retired/<key id>.pem            previous private keys (0600, folder 0700), one per rotation

`flows ts rotate-key` (`rotate_gateway_key`) makes a new pair and moves the current private key to
`retired/`. Boxes sealed to the previous key still open: every box names its key id (sealing.py),
and `GatewayKeys.open` picks the private key by that id (re-reading the folder when it does not know
the id, so a running gateway follows a rotation without a restart). A retired private key is
deleted by the gateway (`GatewayKeys.prune`, from its resume pass) once no stored box is sealed to
it and it was retired at least `RETIRED_KEY_GRACE_S` ago: a command sealed by a CLI just before the
rotation may still wait on Kafka, for at most the command topic's retention.

Why keep the old private key rather than re-seal the stored boxes to the new one: a box is then
written once and deleted once, and never opened for anything but its submission; a re-seal would
open every stored box at each rotation, and the key would still have to be kept for the commands
in flight. The price is a retired key on disk until the last submission sealed to it ends.

A rotation writes the new private key before the new public key, each by rename: a crash in
between leaves a current private key whose public file is the old one; `GatewayKeys` repairs it
(the public key is derived from the private one), and boxes sealed to the old public key open with
the retired copy, written first.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from contracts.topics import SECRET_COMMAND_RETENTION_MS
from services.ts_gateway import sealing
from services.ts_gateway.sealing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    Credentials,
    SealError,
    ensure_gateway_keypair,
    key_id,
    load_private_key,
    new_key_pair,
    private_key_id,
    public_of,
    sealed_key_id,
    unseal,
    write_atomically,
)

RETIRED_DIR = "retired"
# A retired key stays at least as long as a command sealed to it can wait on Kafka.
RETIRED_KEY_GRACE_S = SECRET_COMMAND_RETENTION_MS / 1000


class KeysError(RuntimeError):
    """The keys folder cannot be used as asked (no key yet, unwritable); the message says what to do."""


@dataclass(frozen=True)
class Rotation:
    previous: str  # key id, now retired
    current: str  # key id new seals use


def _rotation_lock(directory: Path) -> contextlib.AbstractContextManager[None]:
    """The lock that also serialises the pair's creation (sealing.keys_lock)."""
    return sealing.keys_lock(directory)


def rotate_gateway_key(directory: Path) -> Rotation:
    """New key pair in `directory`; the current private key moves to `retired/` (see the module doc)."""
    public_path, private_path = directory / PUBLIC_KEY_FILE, directory / PRIVATE_KEY_FILE
    if not private_path.is_file() or not public_path.is_file():
        raise KeysError(f"there is no gateway key in {directory}: the TS gateway creates it when it first starts")
    with _rotation_lock(directory):
        old_private = private_path.read_bytes()
        previous = private_key_id(old_private)
        retired = directory / RETIRED_DIR
        retired.mkdir(mode=0o700, exist_ok=True)
        kept = retired / f"{previous}.pem"
        if not kept.exists():
            write_atomically(kept, old_private, 0o600)
        new_public, new_private = new_key_pair()
        write_atomically(private_path, new_private, 0o600)
        write_atomically(public_path, new_public, 0o644)
        return Rotation(previous=previous, current=key_id(new_public))


class GatewayKeys:
    """The private keys the gateway holds, by key id: the current one and the retired ones. Each is
    parsed once (validating an RSA key takes hundreds of milliseconds), when the folder changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.current_id = ""
        self._private: dict[str, rsa.RSAPrivateKey] = {}
        self._retired: dict[Path, str] = {}
        self._current_pem = b""
        self.reload()

    def _retired_files(self) -> set[Path]:
        return set((self.directory / RETIRED_DIR).glob("*.pem"))

    def reload(self) -> None:
        public_pem, private_pem = ensure_gateway_keypair(self.directory)
        current_key = self._private.get(self.current_id) if private_pem == self._current_pem else None
        if current_key is None:
            current_key, self._current_pem = load_private_key(private_pem), private_pem
        current = private_key_id(current_key)
        if key_id(public_pem) != current:  # a rotation died between its two renames
            write_atomically(self.directory / PUBLIC_KEY_FILE, public_of(private_pem), 0o644)
        keys, retired = {current: current_key}, {}
        for path in sorted(self._retired_files()):
            # a key we hold already (e.g. the current key, just retired): named by its id, not parsed again
            private_key = self._private.get(self._retired.get(path) or path.stem)
            if private_key is None:
                private_key = load_private_key(path.read_bytes())
            retired[path] = kid = private_key_id(private_key)
            keys.setdefault(kid, private_key)
        self._private, self._retired, self.current_id = keys, retired, current

    def held(self) -> set[str]:
        return set(self._private)

    def open(self, sealed: str) -> tuple[Credentials, str]:
        """The credentials and the id of the key that opened them; SealError (no values) otherwise."""
        kid = sealed_key_id(sealed)
        if kid is None:  # a version 1 box does not say: the current key first, then the retired ones
            for candidate, private_key in sorted(self._private.items(), key=lambda item: item[0] != self.current_id):
                with contextlib.suppress(SealError):
                    return unseal(private_key, sealed), candidate
            raise SealError("sealed credentials (TSG1) cannot be opened with any key this gateway holds")
        if kid not in self._private:
            self.reload()  # rotated since we last looked
        held = self._private.get(kid)
        if held is None:
            raise SealError(f"sealed credentials were sealed to key {kid}, which this gateway does not hold "
                            f"(its current key is {self.current_id}): seal them again with its public key")
        return unseal(held, sealed), kid

    def prune(self, in_use: set[str], grace_s: float | None = None, now: float | None = None) -> list[str]:
        """Deletes the retired private keys no stored box is sealed to, retired at least `grace_s` ago
        (default `RETIRED_KEY_GRACE_S`); returns their ids."""
        grace = RETIRED_KEY_GRACE_S if grace_s is None else grace_s
        moment = time.time() if now is None else now
        if self._retired_files() != set(self._retired):
            self.reload()  # rotated since we last looked
        removed = []
        for path, kid in sorted(self._retired.items()):
            if kid in in_use or kid == self.current_id or moment - path.stat().st_mtime < grace:
                continue
            path.unlink(missing_ok=True)
            removed.append(kid)
        if removed:
            self.reload()
        return removed
