"""A regional coordinator's side of the deployment: ``zenfed serve --upstream URL``.

    link = Upstream.of(url, name, token, cafile)     # the --upstream* options
    cfg, region_link = link.connect(local_cfg, state) # the root's federation, joined

The region serves its own participants with the root's federation (model, adapter,
training, codec) and its own sampling, service and secure aggregation; its identity at
the root is kept in its state folder (``upstream-identity.pem``, 0600), so a restart goes
on without a new invite. Its work for the root runs beside its service
(``transport.http.upstream``); the rounds themselves are ``coordinator.regional``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zenfed.config import FederationConfig, parse_config
from zenfed.errors import ZenfedError


@dataclass(frozen=True)
class Upstream:
    """Where a regional coordinator's root is, and how the region joins it."""

    url: str
    name: str
    token: str | None = None  # needed the first time only
    cafile: Path | None = None

    def connect(
        self, local: FederationConfig, state: Path, give_up_s: float = 30.0
    ) -> tuple[FederationConfig, Any]:
        """The region's config (the root's federation with ``local``'s sampling, service
        and secure aggregation) and its link to the root (identity kept in ``state``)."""
        from zenfed.protocol.auth import Identity
        from zenfed.transport.http.client import CoordinatorClient, CoordinatorRefused

        path = state / "upstream-identity.pem"
        me = Identity.load(path) if path.exists() else Identity.create(path)
        verify = str(self.cafile) if self.cafile else True
        client = CoordinatorClient(self.url, me, verify=verify, give_up_after_s=give_up_s)
        try:
            root = client.federation()
        except ZenfedError as e:
            client.close()
            raise ZenfedError(
                f"the upstream coordinator at {self.url} is unreachable: {e.problem}",
                fix="check --upstream and that the root runs",
            ) from e
        client.give_up_after_s = None  # from now on: retried for as long as it takes
        cfg = regional_config(root, local)
        token = self.token
        try:
            client.me()
            token = None  # enrolled already
        except CoordinatorRefused as e:
            if e.status != 401:
                raise
            if not token:
                raise ZenfedError(
                    "this region has not joined its root yet",
                    fix="pass --upstream-token-file FILE or set ZENFED_UPSTREAM_TOKEN (an invite "
                    "from the root's operator)",
                ) from e
        return cfg, RegionLink(client, self.name, token)

    @staticmethod
    def of(url: str | None, name: str | None, token: str | None, cafile: Path | None) -> Any:
        """The ``--upstream*`` options as an Upstream (None without ``--upstream``)."""
        if url is None:
            if name or token:
                raise ZenfedError("--upstream-name and --upstream-token need --upstream", fix="")
            return None
        if not name:
            raise ZenfedError("a regional coordinator needs --upstream-name", fix="name it")
        return Upstream(url, name, token, cafile)


@dataclass
class RegionLink:
    """A regional coordinator's connection to its root (see ``transport.http.upstream``)."""

    client: Any
    name: str
    token: str | None
    region: Any = None

    def region_for(self, cfg: FederationConfig, initial: Any) -> Any:
        """The port's view of the root: the region's identity there and its codec."""
        from zenfed.compress import Pipeline
        from zenfed.coordinator.regional import Region

        shapes = {k: tuple(v.shape) for k, v in initial.items()}
        self.region = Region(self.client.identity.id, Pipeline(cfg.compress, shapes))
        return self.region

    async def work(self, ctx: Any) -> None:
        """The region's work for the root, beside its own service."""
        from zenfed.transport.http.upstream import Link, work_for_root

        link = Link(self.client, self.region, self.name, self.token, _memory_gb())
        await work_for_root(ctx, link)


def regional_config(root: dict[str, Any], local: FederationConfig) -> FederationConfig:
    """The root's federation as a region runs it: the root's model, adapter, training and
    codec; the region's own sampling (under the root's [regions], at its rate), service
    and secure aggregation. What a region cannot do yet is refused here, before anything
    starts."""
    cfg = parse_config(root, origin="the root")
    if cfg.privacy.clip_norm is not None and not cfg.regions.enabled:
        raise ZenfedError(
            "the root clips updates (differential privacy) but has no [regions]: it would "
            "clip each region's sum as if it were one participant's update",
            fix="set [regions] enabled = true (and fraction) in the root's config",
        )
    if cfg.secagg.enabled:
        raise ZenfedError(
            "the root runs secure aggregation; among regional coordinators it is not built",
            fix="turn [secagg] off at the root and on in each region's own config",
        )
    if cfg.buffered.enabled or local.buffered.enabled:
        raise ZenfedError(
            "buffered aggregation with regional coordinators is not built",
            fix="run synchronous rounds at the root and in the regions",
        )
    raw = cfg.model_dump(mode="json")
    for section in ("sampling", "service", "secagg"):
        raw[section] = getattr(local, section).model_dump(mode="json")
    if cfg.regions.enabled:  # the root's sampling rate, which its accountant composes
        raw["sampling"].update(fraction=cfg.regions.fraction, method="poisson")
    raw["regions"]["enabled"] = False  # (its noise placement stays: the region reads it)
    return parse_config(raw, origin="the region")


def _memory_gb() -> float:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
