from __future__ import annotations

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024
