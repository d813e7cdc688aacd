"""The analyze stage: per-feature statistics and examples, and the feature-store format and reader."""

from interp.features.analyze import analyze_features
from interp.features.config import AnalyzeConfig
from interp.features.store import KINDS, FeatureStore, load_feature_store

__all__ = ["KINDS", "AnalyzeConfig", "FeatureStore", "analyze_features", "load_feature_store"]
