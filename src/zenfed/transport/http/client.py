"""The participant's side of the HTTP transport: the port to the coordinator as signed
requests with retries (httpx).

    client = CoordinatorClient("https://coord:8443", identity, verify="ca.pem")
    pid, config = client.enroll(token, "clinic-7", capacity, data_profile)
    task = client.task()                        # long-polls; None: no task yet
    payload = client.download(task.version, held)
    client.upload(update)                       # "accepted" or "duplicate" (a retried one)

It is a ``ParticipantPort`` (``zenfed.protocol.port``): ``zenfed join`` runs the same
participant loop over it that the simulation runs over the in-memory transport; it only
encodes the port's messages (``wire``) and decodes the answers. Neighbours' identity keys
are checked against their ids (key hashes), so a coordinator cannot substitute one.

Network errors and 5xx answers are retried with exponential backoff and full jitter,
capped at ``max_backoff_s``, for as long as it takes (or ``give_up_after_s``): an agent
outlives any number of coordinator restarts and says, now and then, what it is waiting
for. A 4xx answer is final and raised as a ZenfedError carrying the server's problem and
fix. A download that breaks resumes where it stopped with an HTTP Range request, and a
full version is checked against its ETag (sha256). Enrollment is idempotent on the
coordinator, so a retried enrollment whose first answer was lost gets the same answer.
"""

from __future__ import annotations

import hashlib
import json
import random
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx

from zenfed.errors import ZenfedError
from zenfed.privacy.secagg import SecAggError
from zenfed.protocol.auth import Identity, participant_id, sign_request
from zenfed.protocol.messages import EvalReport, Task, Update
from zenfed.protocol.port import FederationFinished, NeighbourKeys, StageInput, StageMessage
from zenfed.transport.http import wire

T = TypeVar("T")
__all__ = ["CoordinatorClient", "CoordinatorRefused", "FederationFinished"]


class CoordinatorRefused(ZenfedError):
    """A final (4xx) answer; ``status`` is its HTTP status."""

    def __init__(self, problem: str, fix: str, status: int) -> None:
        super().__init__(problem, fix)
        self.status = status


class CoordinatorClient:
    """Signed, retried requests to one coordinator."""

    def __init__(
        self,
        url: str,
        identity: Identity,
        verify: str | bool | ssl.SSLContext = True,
        timeout_s: float = 60.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        give_up_after_s: float | None = None,
        log: Callable[[str], None] = print,
        wait_s: float = 20.0,
    ) -> None:
        self.identity = identity
        if isinstance(verify, str):  # a CA file: trust it (and only what it signs)
            verify = ssl.create_default_context(cafile=verify)
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, verify=verify, timeout=timeout_s)
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.give_up_after_s = give_up_after_s
        self.log = log
        self.wait_s = wait_s  # how long a task or stage long-poll waits at the coordinator

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def enroll(
        self, token: str, name: str, capacity: dict[str, Any], data_profile: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """Enroll this identity; returns (participant id, the federation's config)."""
        import base64

        body = {
            "token": token,
            "name": name,
            "public_key": base64.b64encode(self.identity.public_key).decode(),
            "capacity": capacity,
            "data_profile": data_profile,
        }
        r = self._send("POST", "/v1/enroll", json_body=body, signed=False)
        data = r.json()
        return str(data["participant"]), dict(data["config"])

    def federation(self) -> dict[str, Any]:
        """The federation's config (public: what joining means, before enrolling)."""
        return dict(self._send("GET", "/v1/federation", signed=False).json())

    def me(self) -> dict[str, Any]:
        """Who the coordinator knows this identity as (CoordinatorRefused 401 if it is not
        enrolled, or revoked)."""
        return dict(self._send("GET", "/v1/me").json())

    def task(self) -> Task | None:
        """This participant's task in the open round, long-polling up to ``wait_s``."""
        r = self._send("GET", f"/v1/task?wait={self.wait_s:g}")
        if r.status_code == 204:
            return None
        return wire.task_from_json(r.json())

    def stage_post(self, server_round: int, stage: str, message: StageMessage) -> None:
        """Post this participant's message for a secure-aggregation stage (signed JSON)."""
        data = json.dumps(wire.stage_message_to_json(message)).encode()
        path = f"/v1/rounds/{server_round}/secagg/{stage}"
        self._send("POST", path, body=data, content_type="application/json")

    def stage_get(self, server_round: int, stage: str) -> StageInput | None:
        """What a stage needs, long-polling up to ``wait_s`` (None: not begun yet)."""
        path = f"/v1/rounds/{server_round}/secagg/{stage}?wait={self.wait_s:g}"
        r = self._send("GET", path)
        if r.status_code == 204:
            return None
        got = wire.stage_input_from_json(stage, r.json())
        if isinstance(got, NeighbourKeys):
            for v, key in got.identities.items():  # ids are key hashes: no substitution
                if participant_id(key) != v:
                    raise SecAggError(
                        f"the identity key given for '{v[:12]}' is not that participant's",
                        fix="refused: a coordinator substituting keys could read the shares",
                    )
        return got

    def report(self, report: EvalReport) -> None:
        """Federated evaluation over the network is not built yet (the service hands out
        no evaluation tasks, so this is never asked for)."""
        raise ZenfedError(
            "the coordinator service does not run federated evaluation yet",
            fix="evaluate with zenfed simulate",
        )

    def download(self, version: str, held: str | None) -> bytes:
        """The version's payload (the broadcasts since ``held``, or in full, resumable)."""
        path = f"/v1/versions/{version}" + (f"?{urlencode({'held': held})}" if held else "")
        data, etag = b"", ""

        def attempt() -> None:
            nonlocal data, etag
            headers = {"range": f"bytes={len(data)}-"} if data else {}
            headers |= sign_request(self.identity, "GET", path, b"")
            with self.http.stream("GET", path, headers=headers) as r:
                if r.status_code >= 400:
                    r.read()
                    _raise(r)
                if r.status_code == 200:
                    data = b""  # the server sent it all (no range or a diff): start over
                etag = r.headers.get("etag", "").strip('"')
                for chunk in r.iter_bytes():
                    data += chunk  # kept across attempts: the next one resumes

        self._retrying(f"GET {path}", attempt)
        if etag and hashlib.sha256(data).hexdigest() != etag:
            raise ZenfedError("downloaded version does not match its ETag", fix="download again")
        return data

    def upload(self, update: Update) -> str:
        """Upload ``update``'s payload with its metadata; "accepted" or "duplicate"."""
        meta = {k: v for k, v in update.metadata().items() if v is not None}
        path = f"/v1/rounds/{update.round}/update?{urlencode(meta)}"
        r = self._send("PUT", path, body=update.payload, content_type="application/octet-stream")
        return str(r.json()["status"])

    def _send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        json_body: Any = None,
        content_type: str | None = None,
        signed: bool = True,
    ) -> httpx.Response:
        def attempt() -> httpx.Response:
            headers = sign_request(self.identity, method, path, body) if signed else {}
            if content_type:
                headers["content-type"] = content_type
            r = self.http.request(
                method,
                path,
                content=body if json_body is None else None,
                json=json_body,
                headers=headers,
            )
            if r.status_code == 410:
                raise FederationFinished("the federation has finished", fix="nothing to do")
            if r.status_code >= 400:
                _raise(r)
            return r

        return self._retrying(f"{method} {path.split('?')[0]}", attempt)

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """``attempt()`` until it does not fail on the network or with a 5xx: exponential
        backoff with full jitter (AWS architecture blog's recommendation), capped at
        ``max_backoff_s``; logged on the 1st, 2nd, 4th, 8th... failure in a row."""
        start, failures = time.monotonic(), 0
        while True:
            try:
                return attempt()
            except (httpx.TransportError, _ServerError) as e:
                failures += 1
                waited = time.monotonic() - start
                if self.give_up_after_s is not None and waited >= self.give_up_after_s:
                    raise ZenfedError(
                        f"the coordinator at {self.url} did not answer {what} for {waited:.0f} s"
                        f" ({type(e).__name__}: {e})",
                        fix="check that it runs and that this machine reaches it",
                    ) from e
                ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** min(failures, 30))
                pause = random.uniform(0, ceiling)
                if failures & (failures - 1) == 0:
                    self.log(
                        f"waiting for the coordinator at {self.url}: {what} failed "
                        f"({type(e).__name__}: {str(e)[:120]}); attempt {failures}, "
                        f"{waited:.0f} s so far, retrying"
                    )
                time.sleep(pause)


class _ServerError(Exception):
    pass


def _raise(r: httpx.Response) -> None:
    if r.status_code >= 500:
        raise _ServerError(f"{r.status_code}: {r.text[:200]}")
    try:
        body = r.json()
        problem, fix = str(body.get("error", r.text)), str(body.get("fix", ""))
    except ValueError:
        problem, fix = r.text[:200], ""
    raise CoordinatorRefused(
        f"coordinator refused ({r.status_code}): {problem}", fix=fix, status=r.status_code
    )
