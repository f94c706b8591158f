"""attractor: a pipeline of AI coding agents on one git repository, supervised and merged green."""

from __future__ import annotations

__version__ = "0.1.0"
