"""SecAgg+ (Bell et al. 2020, after Bonawitz et al. 2017): the coordinator learns the sum of
the participants' vectors and nothing else, even when some drop out mid-round.

    server = SecAggServer(round, cohort, verify_keys, length=d, bound=B, ...)
    client = SecAggClient(pid, server.setup_for(pid), sign)           # one per participant
    server.receive_keys(client.advertise());             server.close_stage()  # 1 advertise_keys
    server.receive_shares(pid, client.share_keys(server.keys_for(pid), verify_keys))
    server.close_stage()                                                        # 2 share_keys
    client.receive_shares(server.inbox(pid))
    server.receive_masked(pid, client.mask(values));     server.close_stage()  # 3 masked_input
    server.receive_unmask(pid, client.unmask(server.unmask_request()))         # 4 unmask
    total = server.finish()            # the sum of the survivors' fixed-point vectors

Stage 1: each participant makes two X25519 key pairs (one to encrypt shares; one to agree
pairwise masks, derived from a 16-byte seed) and a 16-byte self-mask seed, and advertises
both public keys and a SHA-256 commitment to the self-mask seed, signed with its Ed25519
identity. Stage 2: it Shamir-shares the mask-key seed and the self-mask seed among its
neighbours in a random regular graph (threshold t > degree / 2) and sends each neighbour
its shares encrypted with AES-GCM under their X25519 agreement. Stage 3: it uploads its
fixed-point vector plus the PRG expansion of its seed plus, for every neighbour that
completed stage 2, the PRG expansion of their agreed mask key (added if its id sorts
first, subtracted otherwise); the words wrap modulo 2^32. Stage 4: the coordinator names
the survivors (uploaded) and the dropped (shared keys, did not upload); each survivor
returns, for each neighbour, the seed share if that neighbour survived and the mask-key
share if it dropped, never both (an honest participant answers one request per round and
refuses overlapping lists). The coordinator reconstructs, removes the survivors' self
masks and the dropped participants' pairwise masks, and is left with the sum. A
reconstruction is checked against what was advertised (seed commitment, public key), so
inconsistent shares are caught.

Threat model: an honest-but-curious coordinator learns only the sum of at least
``min_survivors`` inputs. A malicious coordinator could lie about who dropped to different
participants (consistency checks of Bonawitz et al.'s active-security variant are not
implemented) or isolate a victim; participants are not checked to have clipped.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from collections.abc import Callable, Collection, Sequence

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from zenfed.errors import ZenfedError
from zenfed.privacy.secagg import crypto, fixedpoint, graph, shamir
from zenfed.protocol.secagg import STAGES, AdvertiseKeys, SecAggSetup, UnmaskRequest

# nonce (12) + two Shamir shares + GCM tag (16)
SHARE_CIPHERTEXT_BYTES = 12 + 2 * shamir.SHARE_BYTES + 16
MAX_SUBSETS = 64  # share subsets tried per secret when some shares are bad


class SecAggError(ZenfedError):
    """A message that does not fit the protocol (wrong stage, sender, shape, signature)."""


class SecAggAborted(ZenfedError):
    """The round cannot finish securely (too few survivors or shares); nothing is released."""


def _share_aad(round: int, owner: str, recipient: str) -> bytes:
    return f"zenfed/secagg/share|{round}|{owner}|{recipient}".encode()


def _mask_info(round: int) -> bytes:
    return f"zenfed/secagg/mask|{round}".encode()


def _cipher_info(round: int) -> bytes:
    return f"zenfed/secagg/cipher|{round}".encode()


def _self_mask(seed: bytes, round: int, n: int) -> np.ndarray:
    return crypto.prg(crypto.derive(seed, f"zenfed/secagg/self|{round}".encode()), n)


def threshold_for(degree: int, fraction: float) -> int:
    """Shares needed: floor(fraction * degree) + 1, so more than half of the neighbours."""
    return max(1, min(degree, math.floor(fraction * degree) + 1))


class SecAggClient:
    """A participant's side of one round of SecAgg+ (fresh keys every round)."""

    def __init__(
        self,
        participant: str,
        setup: SecAggSetup,
        sign: Callable[[bytes], bytes],
        rng: np.random.Generator | None = None,
    ) -> None:
        if setup.threshold <= len(setup.neighbours) / 2 and len(setup.neighbours) > 1:
            raise SecAggError(
                f"threshold {setup.threshold} of {len(setup.neighbours)} neighbours would let "
                "a coordinator collect both secrets of a participant",
                fix="refused: the threshold must exceed half the neighbours",
            )
        self.participant = participant
        self.setup = setup
        self._sign = sign
        self._cipher_sk, self._cipher_pk = crypto.keypair()
        self._mask_seed = os.urandom(shamir.SECRET_BYTES)
        self._mask_sk = crypto.key_from_seed(self._mask_seed)
        self._mask_pk = crypto.public_bytes(self._mask_sk)
        self._seed = os.urandom(shamir.SECRET_BYTES)
        self._rng = rng or np.random.default_rng()
        self._keys: dict[str, AdvertiseKeys] = {}
        self._held: dict[str, tuple[bytes, bytes]] = {}  # owner -> (mask-key share, seed share)
        self._answered = False

    def advertise(self) -> AdvertiseKeys:
        """Stage 1: the signed public keys and seed commitment."""
        unsigned = AdvertiseKeys(
            self.participant,
            self._cipher_pk,
            self._mask_pk,
            hashlib.sha256(self._seed).digest(),
            b"",
        )
        sig = self._sign(unsigned.signed_bytes(self.setup.round))
        return AdvertiseKeys(
            unsigned.participant,
            unsigned.cipher_key,
            unsigned.mask_key,
            unsigned.seed_commitment,
            sig,
        )

    def share_keys(
        self, keys: dict[str, AdvertiseKeys], verify_keys: dict[str, bytes]
    ) -> dict[str, bytes]:
        """Stage 2: check the neighbours' signed keys, then encrypt each its shares."""
        s = self.setup
        for v, k in keys.items():
            if v not in s.neighbours or k.participant != v:
                raise SecAggError(
                    f"'{self.participant}' got keys of '{v}', not a neighbour",
                    fix="the coordinator must forward only neighbours' keys",
                )
            verify_advertisement(k, s.round, verify_keys.get(v))
        if len(keys) < s.threshold:
            raise SecAggAborted(
                f"'{self.participant}' has {len(keys)} neighbours with keys, "
                f"{s.threshold} needed to share its secrets",
                fix="too many neighbours dropped; the round aborts",
            )
        self._keys = dict(keys)
        count = len(s.neighbours)
        sk_shares = shamir.split(self._mask_seed, s.threshold, count)
        seed_shares = shamir.split(self._seed, s.threshold, count)
        out = {}
        for i, v in enumerate(s.neighbours):
            if v not in keys:
                continue
            key = crypto.agree(self._cipher_sk, keys[v].cipher_key, _cipher_info(s.round))
            plain = sk_shares[i][1] + seed_shares[i][1]
            out[v] = crypto.seal(key, plain, _share_aad(s.round, self.participant, v))
        return out

    def receive_shares(self, inbox: dict[str, bytes]) -> None:
        """Decrypt the shares neighbours sent; they are this round's mask partners."""
        s = self.setup
        held = {}
        for owner, blob in inbox.items():
            if owner not in self._keys:
                raise SecAggError(
                    f"'{self.participant}' got shares from '{owner}', whose keys it never saw",
                    fix="route shares only between neighbours that advertised",
                )
            key = crypto.agree(self._cipher_sk, self._keys[owner].cipher_key, _cipher_info(s.round))
            plain = crypto.open_sealed(key, blob, _share_aad(s.round, owner, self.participant))
            if len(plain) != 2 * shamir.SHARE_BYTES:
                raise SecAggError(f"share from '{owner}' has the wrong length", fix="re-share")
            held[owner] = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
        self._held = held

    def mask(self, values: np.ndarray) -> np.ndarray:
        """Stage 3: fixed-point ``values`` plus the self mask plus the pairwise masks."""
        s = self.setup
        if values.shape != (s.length,):
            raise SecAggError(
                f"masked vector of shape {values.shape}, expected ({s.length},)",
                fix="encode the update with the federation's pipeline",
            )
        words = fixedpoint.encode(values, s.scale, self._rng, s.bound)
        words += _self_mask(self._seed, s.round, s.length)
        info = _mask_info(s.round)
        for v in self._held:
            m = crypto.prg(crypto.agree(self._mask_sk, self._keys[v].mask_key, info), s.length)
            if self.participant < v:
                words += m
            else:
                words -= m
        return words

    def unmask(self, request: UnmaskRequest) -> dict[str, bytes]:
        """Stage 4: for each partner, its seed share if it survived, its mask-key share if it
        dropped. Answers once; refuses a request that would reveal both for anyone."""
        s = self.setup
        survivors, dropped = set(request.survivors), set(request.dropped)
        if self._answered:
            raise SecAggError(
                f"'{self.participant}' already answered the unmask stage of round {s.round}",
                fix="one unmask request per round",
            )
        if request.round != s.round or survivors & dropped:
            raise SecAggError(
                "an unmask request that names a participant both survivor and dropped "
                "(or is for another round)",
                fix="refused: it would reveal both secrets of one participant",
            )
        if self.participant not in survivors or len(survivors) < s.threshold:
            raise SecAggAborted(
                f"unmask request with {len(survivors)} survivors (threshold {s.threshold})",
                fix="the round aborts",
            )
        self._answered = True
        out = {}
        for owner, (sk_share, seed_share) in self._held.items():
            if owner in survivors:
                out[owner] = seed_share
            elif owner in dropped:
                out[owner] = sk_share
        return out


def verify_advertisement(k: AdvertiseKeys, round: int, verify_key: bytes | None) -> None:
    """Check ``k``'s Ed25519 signature against its sender's identity key."""
    if verify_key is None:
        raise SecAggError(f"no identity key for '{k.participant}'", fix="enroll it first")
    try:
        Ed25519PublicKey.from_public_bytes(verify_key).verify(k.signature, k.signed_bytes(round))
    except (InvalidSignature, ValueError) as e:
        raise SecAggError(
            f"the keys advertised for '{k.participant}' are not signed by its identity",
            fix="forged or altered advertisement: refused",
        ) from e


def secure_buckets(ids: Sequence[str], s: int, seed: int) -> list[list[str]]:
    """Bucketed secure aggregation's groups: a permutation of ``ids`` drawn from ``seed``,
    cut into floor(n / s) groups whose sizes differ by at most one (each at least s >= 2,
    so no bucket sum is one participant's input)."""
    if s < 2 or len(ids) < s:
        raise SecAggAborted(
            f"{len(ids)} participants cannot form secure buckets of {s} (each needs 2 or more)",
            fix="sample larger cohorts or use a smaller bucket",
        )
    order = np.random.default_rng([seed, 5]).permutation(len(ids))
    ranked = sorted(ids)
    return [[ranked[i] for i in part] for part in np.array_split(order, len(ids) // s)]


class SecAggServer:
    """The coordinator's side of one round: routes messages, sums, unmasks.

    With ``buckets`` (bucketed secure-robust aggregation, Karimireddy et al. 2022) each
    bucket is its own masking group: a participant's neighbours are the rest of its bucket,
    so the masks cancel within each bucket and ``finish_buckets`` reveals each bucket's sum,
    never less. A bucket left with one survivor is not unmasked (its sum would be that
    participant's input): it drops out of the round.
    """

    def __init__(
        self,
        round: int,
        cohort: Sequence[str],
        verify_keys: dict[str, bytes],
        *,
        length: int,
        bound: float,
        degree: int | None = None,
        threshold: float = 0.5,
        min_survivors: int = 2,
        seed: int = 0,
        buckets: Sequence[Sequence[str]] | None = None,
    ) -> None:
        ids = sorted(cohort)
        if len(ids) < max(2, min_survivors):
            raise SecAggAborted(
                f"a cohort of {len(ids)} cannot be aggregated securely "
                f"(at least {max(2, min_survivors)} needed)",
                fix="sample more participants per round",
            )
        self.round = round
        self.verify_keys = dict(verify_keys)
        if buckets is None:
            self.buckets: list[list[str]] = [ids]
            self.graph = graph.neighbours(ids, degree, seed)
        else:
            self.buckets = [sorted(b) for b in buckets]
            if sorted(p for b in self.buckets for p in b) != ids or min(map(len, buckets)) < 2:
                raise SecAggError(
                    "secure buckets must partition the cohort into groups of 2 or more",
                    fix="form them with secure_buckets",
                )
            self.graph = {p: tuple(q for q in b if q != p) for b in self.buckets for p in b}
        self.bucketed = buckets is not None
        self.bucket_of = {p: i for i, b in enumerate(self.buckets) for p in b}
        # shares that rebuild a participant's secrets: more than half its neighbours
        self.thresholds = {p: threshold_for(len(self.graph[p]), threshold) for p in ids}
        self.min_survivors = max(min_survivors, 1)
        self.length = length
        self.bound = bound
        self.scale = fixedpoint.scale_for(bound, len(ids))
        self.stage = 0
        self.keys: dict[str, AdvertiseKeys] = {}
        self.shares: dict[str, dict[str, bytes]] = {}  # sender -> recipient -> ciphertext
        self.masked: set[str] = set()
        self.totals = [np.zeros(length, dtype=np.uint32) for _ in self.buckets]
        self.responses: dict[str, dict[str, bytes]] = {}

    @property
    def stage_name(self) -> str:
        """The current stage: one of STAGES."""
        return STAGES[self.stage]

    def setup_for(self, pid: str) -> SecAggSetup:
        """The setup message of cohort member ``pid``."""
        return SecAggSetup(
            self.round, self.graph[pid], self.thresholds[pid], self.length, self.bound, self.scale
        )

    def _expect(self, stage: str, pid: str, allowed: Collection[str]) -> None:
        if self.stage_name != stage:
            raise SecAggError(
                f"'{pid}' sent a {stage} message while round {self.round + 1} is in "
                f"{self.stage_name}",
                fix="follow the stages in order",
            )
        if pid not in allowed:
            raise SecAggError(
                f"'{pid}' is not part of the {stage} stage of round {self.round + 1}",
                fix="only participants that completed the previous stage take part",
            )

    def receive_keys(self, k: AdvertiseKeys) -> None:
        """Stage 1: a cohort member's signed keys (checked)."""
        self._expect("advertise_keys", k.participant, set(self.graph))
        if k.participant in self.keys:
            raise SecAggError(f"'{k.participant}' advertised twice", fix="advertise once")
        if len(k.cipher_key) != 32 or len(k.mask_key) != 32 or len(k.seed_commitment) != 32:
            raise SecAggError(f"malformed keys from '{k.participant}'", fix="32-byte keys")
        verify_advertisement(k, self.round, self.verify_keys.get(k.participant))
        for key in (k.cipher_key, k.mask_key):  # a low-order point would break every agreement
            try:
                crypto.agree(crypto.keypair()[0], key, b"zenfed/secagg/check")
            except crypto.CryptoError as e:
                raise SecAggError(
                    f"'{k.participant}' advertised an unusable X25519 key", fix="new keys"
                ) from e
        self.keys[k.participant] = k

    def keys_for(self, pid: str) -> dict[str, AdvertiseKeys]:
        """Stage 2 input: the advertised keys of ``pid``'s neighbours."""
        self._expect("share_keys", pid, self.keys)
        return {v: self.keys[v] for v in self.graph[pid] if v in self.keys}

    def receive_shares(self, pid: str, ciphertexts: dict[str, bytes]) -> None:
        """Stage 2: ``pid``'s encrypted shares, one per neighbour that advertised."""
        self._expect("share_keys", pid, self.keys)
        want = {v for v in self.graph[pid] if v in self.keys}
        if any(len(c) != SHARE_CIPHERTEXT_BYTES for c in ciphertexts.values()):
            raise SecAggError(
                f"'{pid}' sent a share ciphertext that is not {SHARE_CIPHERTEXT_BYTES} bytes",
                fix="send AES-GCM sealed shares",
            )
        if pid in self.shares or set(ciphertexts) != want:
            raise SecAggError(
                f"'{pid}' sent shares for {sorted(ciphertexts)}, expected one for each of "
                f"{sorted(want)}, once",
                fix="share with every neighbour that advertised keys",
            )
        self.shares[pid] = dict(ciphertexts)

    def inbox(self, pid: str) -> dict[str, bytes]:
        """Stage 3 input: the shares ``pid``'s neighbours sent it (its mask partners)."""
        self._expect("masked_input", pid, self.shares)
        return {u: cts[pid] for u, cts in self.shares.items() if pid in cts}

    def check_masked(self, pid: str, words: np.ndarray) -> None:
        """Stage 3: whether ``pid`` may upload ``words`` (SecAggError if not); adds nothing."""
        self._expect("masked_input", pid, self.shares)
        if pid in self.masked:
            raise SecAggError(f"'{pid}' uploaded twice", fix="upload once per round")
        if words.dtype != np.uint32 or words.shape != (self.length,):
            raise SecAggError(
                f"masked vector from '{pid}' has the wrong shape or type: {words.dtype} "
                f"{words.shape}, expected uint32 ({self.length},)",
                fix="mask the vector the setup describes",
            )

    def receive_masked(self, pid: str, words: np.ndarray) -> None:
        """Stage 3: ``pid``'s masked vector, added into the running sum modulo 2^32."""
        self.check_masked(pid, words)
        self.totals[self.bucket_of[pid]] += words
        self.masked.add(pid)

    def progress(self) -> tuple[set[str], set[str]]:
        """(who takes part in the current stage, who has answered it)."""
        unmasking = self.unmask_request().survivors if self.stage_name == "unmask" else ()
        steps: list[Collection[str]] = [
            self.graph,
            self.keys,
            self.shares,
            self.masked,
            self.responses,
        ]
        if self.stage_name == "unmask":
            steps[3] = set(unmasking)
        return set(steps[self.stage]), set(steps[self.stage + 1])

    def close_stage(self) -> None:
        """End the current stage (at quorum or deadline); abort below the survivors needed."""
        if self.stage_name == "unmask":
            return  # the last stage ends in finish()
        alive = self.progress()[1]
        if len(alive) < self.min_survivors:
            raise SecAggAborted(
                f"round {self.round + 1}: {len(alive)} participants completed {self.stage_name}, "
                f"{self.min_survivors} needed",
                fix="the round aborts; the previous global version stays",
            )
        self.stage += 1

    def unmask_request(self) -> UnmaskRequest:
        """Stage 4: who survived (uploaded) and who dropped after sharing keys."""
        if self.stage_name != "unmask":
            raise SecAggError("unmask before the masked inputs were closed", fix="close stage 3")
        kept = set().union(*self._unmasked_buckets())
        dropped = sorted((set(self.shares) - self.masked) & kept)
        return UnmaskRequest(self.round, tuple(sorted(self.masked & kept)), tuple(dropped))

    def _unmasked_buckets(self) -> list[list[str]]:
        """The buckets whose sum is revealed: with bucketing, those with 2 survivors or
        more; without, the whole cohort."""
        if not self.bucketed:
            return self.buckets
        return [b for b in self.buckets if len(self.masked.intersection(b)) >= 2]

    def receive_unmask(self, pid: str, shares: dict[str, bytes]) -> None:
        """Stage 4: a survivor's shares of its partners' secrets (checked for overlap)."""
        self._expect("unmask", pid, self.masked)
        if pid in self.responses:
            raise SecAggError(f"'{pid}' answered unmask twice", fix="answer once")
        partners = {u for u, cts in self.shares.items() if pid in cts}
        if not set(shares) <= partners or any(
            len(s) != shamir.SHARE_BYTES for s in shares.values()
        ):
            raise SecAggError(
                f"'{pid}' returned shares of participants it holds none of, or malformed",
                fix=f"return one {shamir.SHARE_BYTES}-byte share per partner",
            )
        self.responses[pid] = dict(shares)

    def finish(self) -> np.ndarray:
        """The unmasked sum of the survivors' fixed-point words (SecAggAborted if it cannot
        be reconstructed)."""
        return add_words([t for _, t in self.finish_buckets()], self.length)

    def finish_buckets(self) -> list[tuple[tuple[str, ...], np.ndarray]]:
        """(survivors, unmasked sum of their fixed-point words) of every bucket that is
        revealed (SecAggAborted if the round cannot be reconstructed)."""
        req = self.unmask_request()
        if len(req.survivors) < self.min_survivors:
            raise SecAggAborted(
                f"round {self.round + 1}: {len(req.survivors)} survivors, "
                f"{self.min_survivors} needed",
                fix="the previous global version stays",
            )
        out = []
        for i in range(len(self.buckets)):
            alive = tuple(u for u in req.survivors if self.bucket_of[u] == i)
            if alive:
                out.append((alive, self._unmask_bucket(i, alive, req.dropped)))
        return out

    def _unmask_bucket(
        self, i: int, survivors: Sequence[str], all_dropped: Sequence[str]
    ) -> np.ndarray:
        mine = tuple(v for v in all_dropped if self.bucket_of[v] == i)
        req = UnmaskRequest(self.round, tuple(survivors), mine)
        total = self.totals[i].copy()
        for u in req.survivors:
            seed = self._reconstruct(u, self._matches_commitment(u))
            total -= _self_mask(seed, self.round, self.length)
        info = _mask_info(self.round)
        for v in req.dropped:
            sk = crypto.key_from_seed(self._reconstruct(v, self._matches_mask_key(v)))
            for u in req.survivors:
                if v not in self.shares or u not in self.shares[v]:
                    continue  # not partners: no pairwise mask between them
                m = crypto.prg(crypto.agree(sk, self.keys[u].mask_key, info), self.length)
                if u < v:
                    total -= m
                else:
                    total += m
        return total

    def _matches_commitment(self, owner: str) -> Callable[[bytes], bool]:
        want = self.keys[owner].seed_commitment
        return lambda seed: hashlib.sha256(seed).digest() == want

    def _matches_mask_key(self, owner: str) -> Callable[[bytes], bool]:
        want = self.keys[owner].mask_key
        return lambda seed: crypto.public_bytes(crypto.key_from_seed(seed)) == want

    def _reconstruct(self, owner: str, valid: Callable[[bytes], bool]) -> bytes:
        """``owner``'s secret from the survivors' shares: the first threshold-sized subset
        whose result matches what ``owner`` advertised (bad shares are skipped)."""
        nbrs, need = self.graph[owner], self.thresholds[owner]
        got = sorted(
            (nbrs.index(r) + 1, resp[owner]) for r, resp in self.responses.items() if owner in resp
        )
        if len(got) < need:
            raise SecAggAborted(
                f"round {self.round + 1}: {len(got)} shares of '{owner}''s secret, {need} needed",
                fix="too many participants dropped during unmasking",
            )
        for subset in itertools.islice(itertools.combinations(got, need), MAX_SUBSETS):
            try:
                secret = shamir.combine(list(subset), need)
            except shamir.ShamirError:
                continue
            if valid(secret):
                return secret
        raise SecAggAborted(
            f"inconsistent shares: no {need} of the {len(got)} shares of '{owner}''s "
            "secret rebuild what it advertised",
            fix="participants sent bad shares; the round aborts",
        )


def add_words(parts: Sequence[np.ndarray], length: int) -> np.ndarray:
    """The sum of fixed-point word vectors, modulo 2^32."""
    total = np.zeros(length, dtype=np.uint32)
    for t in parts:
        total += t
    return total


def decode_sum(total: np.ndarray, scale: float) -> np.ndarray:
    """The unmasked sum as float64."""
    return fixedpoint.decode(total, scale)
