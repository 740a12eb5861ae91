"""Start-up messages held back until the run starts, so that a settings error is the only line printed.

``ttt fit|validate|test`` print Lightning's start-up notes (``Seed set to 0``, ``GPU available``, the
data summary, warnings) while the run is set up. When the setup then fails on a bad setting, those
notes bury the one line that matters. ``holding_messages()`` keeps them while the run is set up; the
``ReleaseMessages`` callback prints them, in order, as the run starts (``on_fit_start`` and friends,
after data and model setup and the checkpoint restore); a settings error drops them; any other
failure prints them before its traceback.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L

LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")  # the ones holding Lightning's stderr handlers


class HeldMessages(logging.Handler):
    """Collects log records, warnings and notes; ``show()`` prints them, ``discard()`` forgets them."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[tuple[str, Any]] = []
        self.handlers: dict[str, list[logging.Handler]] = {}
        self.showwarning = warnings.showwarning
        self.held = False

    def emit(self, record: logging.LogRecord) -> None:
        self.items.append(("log", record))

    def note(self, text: str) -> None:
        """A line for stderr, printed with the others (now, when nothing is held)."""
        if self.held:
            self.items.append(("text", text))
        else:
            print(text, file=sys.stderr)

    def hold(self) -> None:
        for name in LOGGERS:
            logger = logging.getLogger(name)
            self.handlers[name] = logger.handlers[:]
            logger.handlers = [self]
        self.showwarning = warnings.showwarning
        warnings.showwarning = lambda *args, **kwargs: self.items.append(("warning", (args, kwargs)))
        self.held = True

    def _restore(self) -> None:
        if not self.held:
            return
        for name, handlers in self.handlers.items():
            logging.getLogger(name).handlers = handlers
        warnings.showwarning = self.showwarning
        self.held = False

    def show(self) -> None:
        """Print what was held, in order, and stop holding."""
        if not self.held:
            return
        self._restore()
        items, self.items = self.items, []
        for kind, item in items:
            if kind == "log":
                logger = logging.getLogger(item.name)
                while logger is not None:  # the handlers the record would have reached
                    for handler in logger.handlers:
                        if item.levelno >= handler.level:
                            handler.handle(item)
                    logger = logger.parent if logger.propagate else None
            elif kind == "warning":
                args, kwargs = item
                self.showwarning(*args, **kwargs)
            else:
                print(item, file=sys.stderr)

    def discard(self) -> None:
        self._restore()
        self.items = []


_current: HeldMessages | None = None


@contextmanager
def holding_messages() -> Iterator[HeldMessages]:
    """Hold start-up messages in the body; released by ``ReleaseMessages`` or when the body fails (a caller
    that reports a settings error calls ``discard()`` first)."""
    global _current
    held = HeldMessages()
    held.hold()
    _current = held
    try:
        yield held
    finally:
        held.show()
        _current = None


class ReleaseMessages(L.Callback):
    """Prints the held start-up messages once the run has started."""

    def _release(self, *args: Any) -> None:
        if _current is not None:
            _current.show()

    on_fit_start = on_validation_start = on_test_start = _release


def release_callbacks() -> list[L.Callback]:
    """``[ReleaseMessages()]`` while messages are held, else nothing."""
    return [ReleaseMessages()] if _current is not None and _current.held else []
