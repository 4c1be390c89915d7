"""Pure-computation core of streaming ad-model recalibration (numpy + orjson + stdlib only)."""

from .calibration_map import SCHEMA_VERSION, CalibrationMap, identity_map
from .calibrator import Calibrator, CalibratorConfig
from .gate import GateDecision, QualityGate
from .histogram import BinSpec, Histogram
from .isotonic import pav, shrunk_isotonic
from .platt import fit_platt, platt_predict
from .validation import check_batch, drop_invalid, valid_mask

__all__ = [
    "SCHEMA_VERSION",
    "BinSpec",
    "CalibrationMap",
    "Calibrator",
    "CalibratorConfig",
    "GateDecision",
    "Histogram",
    "QualityGate",
    "check_batch",
    "drop_invalid",
    "fit_platt",
    "identity_map",
    "pav",
    "platt_predict",
    "shrunk_isotonic",
    "valid_mask",
]
