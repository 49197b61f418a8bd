"""Console logging for the entry points: one line per message.

Lightning attaches its own console handler to its loggers when it is imported before logging is
configured; under Hydra (which configures the root logger) every Lightning message would then be
printed twice. ``single_console_logging`` removes Lightning's handlers so its messages go through the
root logger once, and silences Lightning's advertising tips.
"""

from __future__ import annotations

import logging


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def single_console_logging() -> None:
    """Call once at the start of a tool, after Hydra has configured logging."""
    root_has_handlers = bool(logging.getLogger().handlers)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        if root_has_handlers:
            for h in list(logger.handlers):
                logger.removeHandler(h)
            logger.propagate = True
        logger.addFilter(_NoTips())
    for h in logging.getLogger().handlers:
        h.addFilter(_NoTips())
