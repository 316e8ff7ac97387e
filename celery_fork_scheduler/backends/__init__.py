"""Claim backends: where replicas agree on who publishes each slot."""

from __future__ import annotations

from .base import Claim, ClaimBackend, ClaimOutcome, ClaimResult, HighWaterMark
from .local import LocalBackend

__all__ = ["Claim", "ClaimBackend", "ClaimOutcome", "ClaimResult", "HighWaterMark", "LocalBackend"]
