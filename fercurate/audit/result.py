"""What an audit found, as one value: the report is written from it, the CLI renders it, and
FiftyOne receives its per-row findings. Kept apart from the audit's driver so the report can
depend on it without depending on the driver."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class AuditResult:
    """Everything the audit found; ``rows`` is aligned with the manifest."""

    rows: pd.DataFrame
    groups: pd.DataFrame
    label_issues: pd.DataFrame
    balance: dict[str, Any]
    summary: dict[str, Any]
    embeddings: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)
    directory: Path | None = None
