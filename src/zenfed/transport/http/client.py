"""The participant's side of the HTTP transport: signed requests with retries (httpx).

    client = CoordinatorClient("https://coord:8443", identity, verify="ca.pem")
    pid, config = client.enroll(token, "clinic-7", capacity, data_profile)
    task = client.task(wait=20)                 # None: no task yet; FederationFinished: done
    payload = client.download(task.version, held)
    client.upload(update)                       # "accepted" or "duplicate" (a retried one)

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
from dataclasses import asdict
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx

from zenfed.errors import ZenfedError
from zenfed.privacy.secagg import wire
from zenfed.protocol.auth import Identity, sign_request
from zenfed.protocol.messages import Task, Update

T = TypeVar("T")


class FederationFinished(ZenfedError):
    """The coordinator has run every round: nothing more to do."""


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
    ) -> None:
        self.identity = identity
        if isinstance(verify, str):  # a CA file: trust it (and only what it signs)
            verify = ssl.create_default_context(cafile=verify)
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, verify=verify, timeout=timeout_s)
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.give_up_after_s = give_up_after_s
        self.log = log

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

    def task(self, wait: float = 20.0) -> Task | None:
        """This participant's task in the open round, waiting up to ``wait`` seconds."""
        r = self._send("GET", f"/v1/task?wait={wait:g}")
        if r.status_code == 204:
            return None
        d = r.json()
        setup = d.get("secagg")
        return Task(**{**d, "secagg": wire.setup_from_json(setup) if setup else None})

    def secagg_send(self, server_round: int, stage: str, body: dict[str, Any]) -> None:
        """Post this participant's message for a secure-aggregation stage (signed JSON)."""
        data = json.dumps(body).encode()
        path = f"/v1/rounds/{server_round}/secagg/{stage}"
        self._send("POST", path, body=data, content_type="application/json")

    def secagg_wait(
        self, server_round: int, stage: str, timeout_s: float, wait: float = 20.0
    ) -> dict[str, Any]:
        """What a secure-aggregation stage needs, once it has begun (ZenfedError after
        ``timeout_s`` or if the coordinator says the stage is over or we are not in it)."""
        end = time.monotonic() + timeout_s
        path = f"/v1/rounds/{server_round}/secagg/{stage}?wait={wait:g}"
        while time.monotonic() < end:
            r = self._send("GET", path)
            if r.status_code == 200:
                return dict(r.json())
        raise ZenfedError(
            f"stage {stage} of round {server_round + 1} did not begin within {timeout_s:g} s",
            fix="the round went on without this participant",
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
        skip = ("payload", "participant")
        meta = {k: v for k, v in asdict(update).items() if k not in skip and v is not None}
        meta.pop("round")
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
                pause = random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**failures))
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
