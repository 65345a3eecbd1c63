"""The gateway's side of C2SP tlog-witness: submit checkpoints, collect verified cosignatures.

:class:`WitnessClient` talks to one witness over HTTP (standard library :mod:`http.client`,
keep-alive, a timeout on every socket operation) and maps everything that can go wrong into the
project's error tree where it enters::

    connection refused, reset, timed out, 5xx      -> UnavailableError ("witness-unreachable")
    409 Conflict (text/x.tlog.size)                -> ConflictError with known_size
    422 Unprocessable Entity                       -> MismatchError ("bad-consistency-proof")
    404 Not Found                                  -> UntrustedSignerError ("unknown-log")
    403 Forbidden                                  -> UntrustedSignerError ("log-key-refused")
    413, 400, other 4xx                            -> OversizeError / MalformedError
    200 without a valid cosignature by its key     -> SignatureError / MalformedError

:class:`WitnessPool` submits one checkpoint to every configured witness at once, within one
deadline, and keeps what came back: the checkpoint with every cosignature appended, and per
witness either its cosignature lines or the error. A witness that is behind (it missed earlier
checkpoints while down) answers 409 with its size; the pool asks the log for a proof from that
size and submits again, once.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from gateway.core.errors import (
    ConflictError,
    MalformedError,
    MismatchError,
    OversizeError,
    ProvenanceError,
    SignatureError,
    UnavailableError,
    UntrustedSignerError,
    VerificationError,
)
from gateway.core.note import COSIGNATURE_V1, Checkpoint, Verifier, open_note
from gateway.ledger.witness import AddCheckpointRequest

__all__ = ["ConsistencyProver", "PoolResult", "WitnessClient", "WitnessPool"]

#: ``prove(old_size)`` returns the RFC 9162 consistency proof from *old_size* to the size of the
#: checkpoint being submitted (empty when the sizes are equal or *old_size* is 0).
ConsistencyProver = Callable[[int], Sequence[bytes]]

#: Answers larger than this are not read: a few cosignature lines are < 1 KiB.
_MAX_RESPONSE = 64 * 1024
_SIZE_TYPE = "text/x.tlog.size"
# A reused keep-alive connection the server closed in the meantime fails in one of these ways
# before any answer; the request is then sent again once on a fresh connection.
_STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


def _note_text(signed_checkpoint: bytes) -> bytes:
    split = signed_checkpoint.rfind(b"\n\n")
    if split < 0:
        raise MalformedError(
            "The checkpoint to submit is not a signed note.", reason="malformed-note"
        )
    return signed_checkpoint[: split + 1]


class WitnessClient:
    """One witness: its submission URL and its cosigning key (a type 0x04 vkey).

    Thread-safe: requests to one witness are sent one at a time over one keep-alive connection.
    *timeout* bounds every connect, send and receive, so a dead or stuck witness costs at most
    about that long.
    """

    def __init__(self, url: str, verifier: Verifier, *, timeout: float = 5.0) -> None:
        if verifier.sig_type != COSIGNATURE_V1:
            raise ValueError(f"the witness key {verifier.name} is not a cosignature key (0x04)")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the witness URL {url!r} is not an http:// or https:// URL")
        self.url = url
        self.verifier = verifier
        self.timeout = timeout
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path.rstrip("/") + "/add-checkpoint"
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None

    @property
    def name(self) -> str:
        """The witness's key name, which its cosignature lines carry."""
        return self.verifier.name

    def submit(
        self, signed_checkpoint: bytes, old_size: int, consistency_proof: Sequence[bytes]
    ) -> list[str]:
        """Submit a checkpoint with a proof from *old_size*; return the witness's cosignature lines.

        Each returned line (``— name base64(...)`` and a newline) verified with this witness's
        key over the checkpoint text; append them to the signed note to keep them. Lines by
        other keys in the answer are ignored (tlog-witness: "MUST ignore any cosignatures from
        unknown keys").
        """
        text = _note_text(signed_checkpoint)
        body = AddCheckpointRequest(old_size, tuple(consistency_proof), signed_checkpoint)
        status, content_type, answer = self._post(body.to_bytes())
        if status == http.client.OK:
            return self._cosignatures(text, answer)
        raise self._refusal(status, content_type, answer)

    def _post(self, body: bytes) -> tuple[int, str, bytes]:
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                conn = self._connection()
                try:
                    conn.request(
                        "POST", self._path, body=body, headers={"Content-Type": "text/plain"}
                    )
                    response = conn.getresponse()
                    answer = response.read(_MAX_RESPONSE + 1)
                    if len(answer) > _MAX_RESPONSE or response.will_close:
                        self._drop()
                    return response.status, response.getheader("Content-Type", ""), answer
                except _STALE_CONNECTION as exc:
                    self._drop()
                    if not reused or attempt == 2:
                        raise self._unavailable(exc) from exc
                except (OSError, http.client.HTTPException) as exc:
                    self._drop()
                    raise self._unavailable(exc) from exc
        raise AssertionError  # pragma: no cover — the loop always returns or raises

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (
                http.client.HTTPSConnection
                if self._scheme == "https"
                else http.client.HTTPConnection
            )
            self._conn = cls(self._host, self._port, timeout=self.timeout)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _unavailable(self, exc: BaseException) -> UnavailableError:
        if isinstance(exc, TimeoutError):
            why = f"did not answer within {self.timeout:g} s"
        else:
            why = f"cannot be reached ({exc.__class__.__name__}: {exc})"
        return UnavailableError(
            f"The witness {self.name} at {self.url} {why}; the checkpoint stays unwitnessed by it "
            "until it is back.",
            reason="witness-unreachable",
        )

    def _cosignatures(self, text: bytes, answer: bytes) -> list[str]:
        # tlog-witness: "the client MAY concatenate [the answer] to the checkpoint, and use a
        # note verification function configured with the witness keys it trusts".
        if not answer.endswith(b"\n"):
            raise MalformedError(
                f"The witness {self.name} answered with no cosignature lines.",
                reason="malformed-cosignature",
            )
        try:
            note = open_note(text + b"\n" + answer, [self.verifier])
        except UntrustedSignerError as exc:
            raise SignatureError(
                f"The witness {self.name} answered, but not with a cosignature by its key "
                f"{self.verifier.key_id:08x}; check the witness key configured for it.",
                reason="witness-wrong-key",
            ) from exc
        return [sig.line for sig in note.signatures if sig.timestamp is not None]

    def _refusal(self, status: int, content_type: str, answer: bytes) -> ProvenanceError:
        said = answer[:500].decode("utf-8", "replace").strip()
        where = f"The witness {self.name} at {self.url}"
        if status == http.client.CONFLICT:
            return self._conflict(content_type, answer)
        if status >= http.client.INTERNAL_SERVER_ERROR:
            return UnavailableError(
                f"{where} failed ({status}): {said}", reason="witness-unreachable"
            )
        refusals: dict[int, ProvenanceError] = {
            http.client.UNPROCESSABLE_ENTITY: MismatchError(
                f"{where} refused the consistency proof: {said}", reason="bad-consistency-proof"
            ),
            http.client.NOT_FOUND: UntrustedSignerError(
                f"{where} does not witness this log: {said}", reason="unknown-log"
            ),
            http.client.FORBIDDEN: UntrustedSignerError(
                f"{where} does not accept this log's signature: {said}", reason="log-key-refused"
            ),
            http.client.REQUEST_ENTITY_TOO_LARGE: OversizeError(
                f"{where} refused the request as too large: {said}", reason="oversize-request"
            ),
        }
        return refusals.get(
            status,
            MalformedError(
                f"{where} refused the request ({status}): {said}", reason="malformed-request"
            ),
        )

    def _conflict(self, content_type: str, answer: bytes) -> VerificationError:
        # tlog-witness: the 409 body is the latest cosigned size in decimal and a newline, typed
        # text/x.tlog.size.
        size = answer.removesuffix(b"\n")
        if content_type.partition(";")[0].strip() != _SIZE_TYPE or not size.isdigit():
            return MalformedError(
                f"The witness {self.name} answered 409 without its latest size.",
                reason="malformed-conflict",
            )
        known = int(size)
        return ConflictError(
            f"The witness {self.name} holds a checkpoint of {known} entries that this one does "
            "not extend from the size given (it is behind, ahead, or saw another history).",
            reason="witness-conflict",
            known_size=known,
        )

    def close(self) -> None:
        """Close the keep-alive connection."""
        with self._lock:
            self._drop()


@dataclass(frozen=True)
class PoolResult:
    """What one round of submissions brought back."""

    #: The signed checkpoint with every verified cosignature line appended (a signed note).
    checkpoint: bytes
    #: Witness name -> its cosignature lines, for the witnesses that cosigned.
    cosignatures: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Witness name -> why it did not cosign (unavailable, refused, conflict).
    failures: Mapping[str, ProvenanceError] = field(default_factory=dict)


class WitnessPool:
    """Every configured witness, asked at once; the cosignatures that came back are kept.

    *deadline* bounds a whole :meth:`submit` round; a witness that has not answered by then
    counts as unavailable for this checkpoint. The pool remembers each witness's latest size
    (starting at 0, which tlog-witness allows as a probe) so the next round sends the right
    proof at once. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, clients: Sequence[WitnessClient], *, deadline: float = 10.0) -> None:
        names = [c.name for c in clients]
        if len(set(names)) != len(names):
            raise ValueError("two witnesses share a key name; each witness needs its own name")
        self._clients = tuple(clients)
        self._deadline = deadline
        self._sizes: dict[str, int] = dict.fromkeys(names, 0)
        self._sizes_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, len(clients)), thread_name_prefix="witness"
        )
        #: The result of the latest :meth:`submit`, or ``None`` before the first.
        self.latest: PoolResult | None = None

    @property
    def known_sizes(self) -> Mapping[str, int]:
        """Witness name -> the size of the latest checkpoint it is known to hold."""
        with self._sizes_lock:
            return dict(self._sizes)

    def submit(self, signed_checkpoint: bytes, prove: ConsistencyProver) -> PoolResult:
        """Submit *signed_checkpoint* to every witness concurrently and collect cosignatures.

        *prove(old_size)* returns a consistency proof from *old_size* to this checkpoint's
        size; it is called from worker threads. Never raises for one witness's failure: those
        are in :attr:`PoolResult.failures`.
        """
        try:
            size = Checkpoint.from_text(_note_text(signed_checkpoint).decode("utf-8")).size
        except UnicodeDecodeError as exc:
            raise MalformedError(
                "The checkpoint to submit is not UTF-8 text.", reason="malformed-note"
            ) from exc
        futures: dict[str, Future[list[str]]] = {
            c.name: self._executor.submit(self._one, c, signed_checkpoint, size, prove)
            for c in self._clients
        }
        done, _ = wait_futures(futures.values(), timeout=self._deadline)
        cosignatures: dict[str, tuple[str, ...]] = {}
        failures: dict[str, ProvenanceError] = {}
        for name, future in futures.items():
            if future not in done:
                failures[name] = UnavailableError(
                    f"The witness {name} did not cosign within {self._deadline:g} s.",
                    reason="witness-unreachable",
                )
                continue
            error = future.exception()
            if error is None:
                cosignatures[name] = tuple(future.result())
            elif isinstance(error, ProvenanceError):
                failures[name] = error
            else:
                raise error
        lines = "".join(line for name in sorted(cosignatures) for line in cosignatures[name])
        result = PoolResult(signed_checkpoint + lines.encode(), cosignatures, failures)
        self.latest = result
        return result

    def _one(
        self, client: WitnessClient, checkpoint: bytes, size: int, prove: ConsistencyProver
    ) -> list[str]:
        with self._sizes_lock:
            old = min(self._sizes[client.name], size)
        try:
            lines = client.submit(checkpoint, old, prove(old))
        except ConflictError as err:
            # The witness is elsewhere than we thought (missed checkpoints, restarted pool):
            # prove from where it is, once. A witness ahead of this checkpoint cannot be helped.
            known = err.known_size
            if known is None:
                raise
            with self._sizes_lock:
                self._sizes[client.name] = known
            if known > size:
                # It cosigned more of this log than the log now holds: the log's database is
                # older than what it published (restored, rolled back), or a second gateway
                # signs with the same key. Nothing proves from here; the caller must stop.
                raise ConflictError(
                    f"The witness {client.name} has cosigned {known} entries of this log, but "
                    f"its newest checkpoint here has {size}.",
                    reason="witness-ahead",
                    known_size=known,
                ) from err
            if known == old:
                raise
            lines = client.submit(checkpoint, known, prove(known))
        with self._sizes_lock:
            self._sizes[client.name] = max(self._sizes[client.name], size)
        return lines

    def close(self) -> None:
        """Stop the worker threads (after running requests end) and close connections."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        for client in self._clients:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
