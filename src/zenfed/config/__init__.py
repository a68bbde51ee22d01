"""The federation's policy as one validated, frozen config: TOML in, typed objects out.

    cfg = load_config("examples/demo.toml")
    cfg.train.lr, cfg.server.optimizer, cfg.run.rounds

Every default is visible in this package: the basic sections (``sections.py``), those
of compression (``compress.py``), sampling (``sampling.py``), privacy (``privacy.py``),
trust (``trust.py``), scale (``scale.py``), adapter shapes (``adapters.py``) and model
lines (``lines.py``); the rules between sections (``federation.py``) and loading
(``loading.py``); all re-exported here. Unknown keys and wrong types are rejected with
one line naming the key and the fix (a close spelling is suggested), so a typo never runs a
silently different experiment.
"""

from __future__ import annotations

from zenfed.config.adapters import AdapterAssignment as AdapterAssignment
from zenfed.config.adapters import AdaptersConfig as AdaptersConfig
from zenfed.config.compress import CompressConfig as CompressConfig
from zenfed.config.compress import LowRankSpec as LowRankSpec
from zenfed.config.compress import QuantizeSpec as QuantizeSpec
from zenfed.config.compress import RandKSpec as RandKSpec
from zenfed.config.compress import SignSpec as SignSpec
from zenfed.config.compress import SketchSpec as SketchSpec
from zenfed.config.compress import TopKSpec as TopKSpec
from zenfed.config.compress import ZstdSpec as ZstdSpec
from zenfed.config.federation import FederationConfig as FederationConfig
from zenfed.config.lines import DEFAULT_LINE as DEFAULT_LINE
from zenfed.config.lines import LinesConfig as LinesConfig
from zenfed.config.loading import TAGGED as TAGGED
from zenfed.config.loading import load_config as load_config
from zenfed.config.loading import parse_config as parse_config
from zenfed.config.privacy import PrivacyConfig as PrivacyConfig
from zenfed.config.privacy import SecAggConfig as SecAggConfig
from zenfed.config.sampling import EpochsSampling as EpochsSampling
from zenfed.config.sampling import PoissonSampling as PoissonSampling
from zenfed.config.sampling import SamplingSpec as SamplingSpec
from zenfed.config.sampling import UniformSampling as UniformSampling
from zenfed.config.scale import BufferedConfig as BufferedConfig
from zenfed.config.scale import DevicesConfig as DevicesConfig
from zenfed.config.scale import RayConfig as RayConfig
from zenfed.config.scale import RegionsConfig as RegionsConfig
from zenfed.config.sections import CHATTERBOT_EIGHT as CHATTERBOT_EIGHT
from zenfed.config.sections import DEFAULT_TARGET_MODULES as DEFAULT_TARGET_MODULES
from zenfed.config.sections import MAX_TTL_S as MAX_TTL_S
from zenfed.config.sections import MAX_WAIT_S as MAX_WAIT_S
from zenfed.config.sections import RULE_PARAMS as RULE_PARAMS
from zenfed.config.sections import RULE_REQUIRED as RULE_REQUIRED
from zenfed.config.sections import AggregatorSpec as AggregatorSpec
from zenfed.config.sections import ColumnMap as ColumnMap
from zenfed.config.sections import DataConfig as DataConfig
from zenfed.config.sections import LoraConfig as LoraConfig
from zenfed.config.sections import ModelConfig as ModelConfig
from zenfed.config.sections import RunConfig as RunConfig
from zenfed.config.sections import ServerConfig as ServerConfig
from zenfed.config.sections import ServiceConfig as ServiceConfig
from zenfed.config.sections import SourceConfig as SourceConfig
from zenfed.config.sections import TrainConfig as TrainConfig
from zenfed.config.trust import AttackConfig as AttackConfig
from zenfed.config.trust import DetectConfig as DetectConfig
from zenfed.config.trust import GateConfig as GateConfig

SamplingConfig = SamplingSpec  # the [sampling] section's type (a tagged union)
