"""`flows audit ...`: signed checkpoints of the event store, inclusion proofs, the auditor's check.

    flows audit checkpoint                     sign the heads of every stream now (checkpoint-N.json)
    flows audit public-key [--out F]           the public key an auditor verifies with
    flows audit prove N [--out F]              the inclusion proof of instance N's stream
    flows audit verify-proof F --public-key K  check a proof with the public key alone
    flows audit report N [--out F]             an instance's whole history as a PDF (default: in
                                               FLOWS_REPORTS_DIR, never over an existing file)
    flows audit files [--sizes-only]           every file the history names is in the file store, intact
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import asyncpg
import pydantic
import typer

from contracts.audit import InclusionProof
from services.cli.common import UserError, console, database, operator_name, run, settings, user_errors
from services.runtime import checkpoints as cps
from services.runtime.read_models import instance_stream

audit_app = typer.Typer(help="Audit: signed checkpoints, inclusion proofs, reports.", no_args_is_help=True)


@audit_app.command("checkpoint")
@user_errors
def checkpoint(force: Annotated[bool, typer.Option(help="sign even when nothing changed")] = False,
               new_key: Annotated[bool, typer.Option(
                   help="the signing key is lost for good: make a new one (refused without this when earlier "
                        "checkpoints exist); give the auditors its public key")] = False) -> None:
    """Sign the head of every stream now; writes checkpoint-N.json and publishes it on audit.checkpoint."""
    cfg = settings()

    async def go() -> cps.Taken:
        async with database(cfg) as pool:
            return await cps.take(pool, cfg.checkpoint_key, cfg.checkpoints_dir, cfg.kafka_bootstrap, force=force,
                                  new_key=new_key)

    taken = run(go())
    cp = taken.checkpoint
    what = "signed" if taken.new else "nothing appended since; latest is"
    console.print(f"checkpoint {cp.sequence} {what}: {cp.tree_size} stream(s), {cp.events} event(s), "
                  f"position ({cp.transaction_id}, {cp.position}), root {cp.root}, key {cp.key_id}")
    console.print(f"file: {taken.path}")


@audit_app.command("public-key")
@user_errors
def public_key(out: Annotated[Path | None, typer.Option(help="write the PEM here")] = None) -> None:
    """The checkpoint signing key's public half (PEM), for auditors."""
    cfg = settings()
    pem = cps.public_pem(cps.signing_key(cfg.checkpoint_key, cfg.checkpoints_dir).public_key())
    if out:
        out.write_bytes(pem)
        console.print(f"public key written to {out}")
    else:
        typer.echo(pem.decode(), nl=False)


@audit_app.command("files")
@user_errors
def files(sizes_only: Annotated[bool, typer.Option(
        "--sizes-only", help="check presence and size only, without reading every file whole")] = False) -> None:
    """Check the file store against the history: every file an instance or an onboarding request names is there,
    of its size, and its bytes hash to its sha256 (after a restore: do the database and the files belong together?).
    Exit 0 when all are, 2 naming each one that is not."""
    from services.runtime.filecheck import Named, check_files, named_files
    from services.runtime.filestore import FileStore

    cfg = settings()

    async def go() -> list[Named]:
        async with database(cfg) as pool:
            return await named_files(pool)

    result = check_files(FileStore(cfg.files_dir), run(go()), contents=not sizes_only)
    how = "present and of their size" if sizes_only else f"present, of their size, {result.hashed} hashed whole"
    if result.problems:
        for found in result.problems:
            console.print(f"[red]{found.named.where} ({found.named.sha256[:12]}…): {found.problem}[/]")
        console.print(f"{len(result.problems)} of {result.named} file(s) named by the history are not as recorded "
                      f"in {cfg.files_dir}")
        raise typer.Exit(2)
    console.print(f"{result.named} file(s) named by the history ({result.distinct} distinct), all {how}, in "
                  f"{cfg.files_dir}")


def _latest() -> cps.CheckpointFile:
    directory = settings().checkpoints_dir
    found = cps.latest(directory)
    if found is None:
        raise UserError(f"no checkpoint in {directory}: take one with `flows audit checkpoint`")
    return found


@audit_app.command("prove")
@user_errors
def prove(instance: int, out: Annotated[Path | None, typer.Option(help="write the proof (JSON) here")] = None) -> None:
    """The inclusion proof of instance N's stream in the latest checkpoint (JSON)."""
    proof = cps.prove(_latest(), instance_stream(instance))
    text = proof.model_dump_json(indent=2) + "\n"
    if out:
        out.write_text(text)
        console.print(f"proof of {proof.head.stream_id} v{proof.head.version} in checkpoint "
                      f"{proof.checkpoint.sequence} written to {out}")
    else:
        typer.echo(text, nl=False)


@audit_app.command("verify-proof")
@user_errors
def verify_proof(file: Path, public_key_file: Annotated[Path, typer.Option("--public-key", help="PEM file")]) -> None:
    """Check a proof with the public key alone: exit 0 when it holds, 2 when it does not."""
    try:
        proof = InclusionProof.model_validate_json(file.read_bytes())
    except pydantic.ValidationError as exc:
        raise UserError(f"{file} is not an inclusion proof: {exc.errors(include_url=False)[0]['msg']}") from None
    key = cps.load_public_key(public_key_file)
    problems = cps.check_proof(proof, key)
    if problems:
        for problem in problems:
            console.print(f"[red]{problem}[/]")
        raise typer.Exit(2)
    cp = proof.checkpoint
    console.print(f"[green]proof verifies[/]: {proof.head.stream_id} at version {proof.head.version} "
                  f"(hash {proof.head.hash}) is leaf {proof.leaf_index} of {cp.tree_size} in checkpoint "
                  f"{cp.sequence}, signed {cp.created_at:%Y-%m-%d %H:%M:%S} UTC by key {cp.key_id}")


@audit_app.command("report")
@user_errors
def report(instance: int,
           out: Annotated[Path | None, typer.Option(help="the PDF (default: FLOWS_REPORTS_DIR/report-N-<UTC time>.pdf, "
                                                         "the stack's <state>/audit/reports)")] = None,
           overwrite: Annotated[bool, typer.Option(help="replace the file --out names if it exists")] = False) -> None:
    """An instance's whole history as a PDF: events, actors, files and sha256, feedback, TS protocolli and
    outcomes, the chain verification and the checkpoint proof. Never replaces an existing file unless --overwrite."""
    from services.runtime import audit_report

    cfg = settings()
    if out is not None and (out.is_dir() or (out.exists() and not overwrite)):
        raise UserError(f"--out {out} " + ("is a folder: give the PDF's file name" if out.is_dir() else
                                           "already exists: give another name, or add --overwrite to replace it"))

    async def go() -> audit_report.ReportData:
        async with database(cfg) as pool:
            return await audit_report.gather(pool, cfg, instance)

    data = run(go())
    try:
        target = audit_report.write(data, out, cfg.reports_dir, operator_name(), overwrite=overwrite)
    except FileExistsError as exc:  # --out taken meanwhile: said, not read as "cannot reach the platform"
        raise UserError(str(exc)) from None
    verdict = "chain verifies" if not data.chain else f"CHAIN BROKEN ({len(data.chain)} break(s))"
    proof = {None: "no checkpoint covers it yet", True: "checkpoint proof verifies",
             False: "CHECKPOINT PROOF FAILS"}[data.checkpoint_ok]
    console.print(f"report of instance {instance}: {len(data.events)} events, {len(data.files)} file(s), "
                  f"{verdict}, {proof}", highlight=False)
    console.print(f"file: {target}", markup=False, highlight=False, soft_wrap=True)


async def check_latest(pool: asyncpg.Pool, stream_ids: list[str] | None) -> tuple[int | None, list[str]]:
    """(sequence of the latest checkpoint or None, problems) for `flows replay --verify`."""
    cfg = settings()
    found = cps.latest(cfg.checkpoints_dir)
    if found is None:
        return None, []
    pub = cps.public_key_path(cfg.checkpoint_key)
    key_file = pub if pub.exists() else cfg.checkpoint_key
    return found.sequence, await cps.check_store(pool, found, cps.load_public_key(key_file), stream_ids=stream_ids)
