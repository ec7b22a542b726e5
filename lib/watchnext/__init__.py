"""watchnext: batch "what to watch next" recommendations on Spark."""

from __future__ import annotations

__version__ = "0.1.0"
