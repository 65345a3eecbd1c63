"""``provgw witness``: run a C2SP tlog-witness for consortium logs, and make its key."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from gateway.core.errors import ProvenanceError, UnavailableError, VerificationError
from gateway.core.note import COSIGNATURE_V1, ED25519, Signer, Verifier
from gateway.ledger.keys import write_secret_file
from gateway.ledger.witness import Witness
from gateway.service.witness_server import WitnessServer
from gateway.store.witness import WitnessStore
from gateway.views.cli._output import emit, fail, json_option

__all__ = ["group"]


@click.group("witness")
def group() -> None:
    """Witness other gateways' transparency logs (C2SP tlog-witness over HTTP).

    A witness cosigns a log's checkpoint only if it extends the last one the witness cosigned,
    so a gateway cannot show different histories to different parties.
    """


def _log_key(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Verifier]:
    del ctx
    keys = []
    for value in values:
        try:
            key = Verifier.from_vkey(value.strip())
        except VerificationError as err:
            raise click.BadParameter(str(err), param=param) from err
        if key.sig_type != ED25519:
            msg = f"{key.name} is not a log key (Ed25519, type 0x01)"
            raise click.BadParameter(msg, param=param)
        keys.append(key)
    return keys


def _read_signer(path: Path) -> Signer:
    try:
        signer = Signer.from_skey(path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError) as err:
        fail(f"cannot read the witness key {path}: {err}")
    except VerificationError as err:
        fail(f"{path} is not a witness key: {err}", hint="make one with `provgw witness keygen`")
    if signer.verifier.sig_type != COSIGNATURE_V1:
        fail(
            f"{path} holds a plain signing key, not a witness cosigning key (type 0x04)",
            hint="make one with `provgw witness keygen`",
        )
    return signer


@group.command("serve")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The witness's secret key file (from `provgw witness keygen`).",
)
@click.option(
    "--log-key",
    "log_keys",
    required=True,
    multiple=True,
    callback=_log_key,
    metavar="VKEY",
    help="A log's public key, name+id+base64; its name is the log's origin. Repeat per log.",
)
@click.option(
    "--db",
    "db_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The witness's own SQLite file (created if missing): the latest checkpoint per log.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=7380,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port, shown at start).",
)
@json_option
def serve(  # noqa: PLR0913 - one parameter per command-line option
    key_file: Path,
    log_keys: list[Verifier],
    db_file: Path,
    host: str,
    port: int,
    *,
    as_json: bool,
) -> None:
    """Serve POST /add-checkpoint until interrupted (Ctrl-C).

    For each log it keeps only the latest checkpoint it cosigned, cosigns a new one only with a
    valid consistency proof from it, and refuses (and records) a log that forks. Give the
    printed witness key (vkey) to the gateways and verifiers that count on this witness.

    Exit code 0: stopped by Ctrl-C; 1: the database or port is unavailable; 2: usage error.
    """
    signer = _read_signer(key_file)
    try:
        store = WitnessStore(db_file)
    except UnavailableError as err:
        fail(str(err), code=1)
    try:
        witness = Witness(signer, log_keys, store)
        server = WitnessServer(witness, host=host, port=port, clock=time.time)
    except ProvenanceError as err:
        store.close()
        fail(str(err), code=1)
    data = {
        "url": server.url,
        "witness": signer.verifier.vkey,
        "logs": [k.vkey for k in log_keys],
        "db": str(db_file),
    }
    text = "\n".join(
        [
            f"witness {signer.name} serving {server.url}/add-checkpoint",
            f"  witness key  {signer.verifier.vkey}",
            *(f"  log          {k.vkey}" for k in log_keys),
            f"  state        {db_file}",
        ]
    )
    emit(data, as_json=as_json, text=text)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        store.close()


@group.command("keygen")
@click.argument("name")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write the secret key to (created with mode 0600; never overwritten).",
)
@json_option
def keygen(name: str, out: Path, *, as_json: bool) -> None:
    """Make a witness cosigning key named NAME.

    NAME identifies the witness, e.g. witness.hospital.example/w1. The secret key goes to
    --out; the public key (vkey) is printed for the gateways and verifiers that will count on
    this witness.

    Exit code 0: written; 2: usage error (bad name, file exists).
    """
    try:
        signer = Signer.generate(name, COSIGNATURE_V1)
    except VerificationError as err:
        fail(str(err))
    try:
        # Never replaces an existing key (its cosignatures would stop verifying).
        write_secret_file(out, (signer.skey() + "\n").encode("utf-8"))
    except FileExistsError:
        fail(f"{out} exists; not overwriting a key", hint="choose another --out file")
    except OSError as err:
        fail(f"cannot create {out}: {err.strerror}")
    emit(
        {"name": name, "vkey": signer.verifier.vkey, "key_file": str(out)},
        as_json=as_json,
        text=f"wrote {out}\nwitness key (vkey): {signer.verifier.vkey}",
    )
    sys.exit(0)
