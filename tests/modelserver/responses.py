"""The responses wire format of the scripted model server (being written)."""

from __future__ import annotations

from typing import Any

ROUTES: dict[str, Any] = {}
