"""Waking up on a file's arrival: a directory watch that sets a `threading.Event` when a file
is created in (or moved into) it, and the sleep that ends on that event.

The signal consumers (`signals.Consumer`, `signals.wait_for`) sleep here between rescans of
their inbox, so a signal is handled as soon as it lands rather than at the next rescan; the
runner also wakes on its agent's messages and on writes to its agent's terminal (`watch_writes`). Without
file-system events (another platform, no inotify watches left) the watch is None and the
callers fall back on their rescan timer. watchdog is imported only when a watch is made: the
hot commands that only send a signal never pay for it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)

STOP_CHECK = 0.1  # seconds between checks of the stop event while sleeping


class Wakeable(Protocol):
    def set(self) -> None: ...


def watch_directory(directory: Path, wake: Wakeable, *, modified: bool = False) -> Callable[[], None] | None:
    """Set `wake` whenever a file appears in `directory` (and, with `modified`, whenever a file
    in it is written to); returns the function that stops watching, or None when no file-system
    events are available (callers then rely on their rescan timer).

    On Linux this registers a callback for IN_CREATE/IN_MOVED_TO (and IN_MODIFY) on watchdog's shared inotify
    reader. watchdog's Observer is not used there: it holds every IN_MOVED_FROM back for 0.5 s
    to pair it with a move target, and events queued behind it wait too, so each claim (a
    rename out of `new/`) would delay the next wake-up by up to half a second."""
    try:
        from watchdog.observers.inotify_c import InotifyConstants
    except Exception:  # not Linux, or another watchdog layout
        return watch_with_observer(directory, wake, modified=modified)
    return _inotify_watch(directory, InotifyConstants.IN_CREATE | InotifyConstants.IN_MOVED_TO
                          | (InotifyConstants.IN_MODIFY if modified else 0), wake)


def watch_writes(path: Path, wake: Wakeable) -> Callable[[], None] | None:
    """Set `wake` whenever something writes to the file `path`, a terminal device too: Linux
    notifies its inode of every write, while its mtime moves only in 8-second slots. The runner
    sleeps on this until its agent prints. None where inotify is not available: the caller then
    looks on its timer."""
    try:
        from watchdog.observers.inotify_c import InotifyConstants
    except Exception:  # not Linux, or another watchdog layout
        return None
    return _inotify_watch(path, InotifyConstants.IN_MODIFY, wake)


def _inotify_watch(path: Path, bits: int, wake: Wakeable) -> Callable[[], None] | None:
    """Set `wake` on the inotify events `bits` of `path`, read by watchdog's shared inotify
    reader thread; the function that stops, or None (logged) when the watch cannot be made."""
    from watchdog.observers.inotify_c import CallbackId, InotifyEvent, InotifyFD, Mask, WatchDescriptor

    mask = Mask(bits)

    class _Doorbell:
        def on_event(self, event: InotifyEvent) -> None:
            if event.mask & mask:
                wake.set()

        def on_watch_deleted(self, wd: WatchDescriptor) -> None:
            wake.set()

        def on_queue_overflow(self) -> None:
            wake.set()  # events were lost: rescan now

    reader = InotifyFD.get_instance()
    doorbell = _Doorbell()
    key = CallbackId(id(doorbell))
    try:
        wd = reader.add_callback(os.fsencode(path), mask, doorbell, key)
    except OSError as exc:
        logger.warning("no file-system events for %s (%s); rescanning on the timer only", path, exc)
        return None
    return lambda: reader.remove_callbacks([(wd, key)])


def watch_with_observer(directory: Path, wake: Wakeable, *, modified: bool = False) -> Callable[[], None] | None:
    from watchdog.events import (
        FileCreatedEvent,
        FileModifiedEvent,
        FileMovedEvent,
        FileSystemEvent,
        FileSystemEventHandler,
    )
    from watchdog.observers import Observer

    class _Waker(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            wake.set()

    observer = Observer()
    try:
        observer.schedule(
            _Waker(), str(directory), recursive=False,
            event_filter=[FileCreatedEvent, FileMovedEvent, *([FileModifiedEvent] if modified else [])],
        )
        observer.start()
    except OSError as exc:
        logger.warning(
            "no file-system events for %s (%s); rescanning on the timer only", directory, exc
        )
        return None

    def unwatch() -> None:
        observer.stop()
        observer.join(timeout=5)

    return unwatch


def unwatch(stop: Callable[[], None] | None) -> None:
    if stop is not None:
        try:
            stop()
        except Exception as exc:  # a watch already gone (directory deleted) is fine
            logger.debug("stopping a file-system watch: %s", exc)


def sleep(wake: threading.Event, stop: threading.Event | None, seconds: float) -> None:
    """Sleep until `wake` is set, `stop` is set, or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while stop is None or not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if wake.wait(remaining if stop is None else min(remaining, STOP_CHECK)):
            return
