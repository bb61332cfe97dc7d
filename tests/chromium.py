"""A minimal headless-Chromium client for tests: the DevTools protocol over ``--remote-debugging-pipe``.

Chromium reads JSON commands from file descriptor 3 and writes replies and events to descriptor 4, one message per
NUL-terminated chunk. The browser is started with ``os.posix_spawn``, whose file actions place our pipe ends at
exactly 3 and 4 in the child without running Python code between fork and exec (``subprocess`` can only pass
descriptors under their own numbers), in a process group of its own so that :meth:`Chromium.close` ends the browser
and every helper process it started, and nothing else. No dependency beyond the standard library.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import select
import shutil
import signal
import time
from typing import Any, Dict, List, Optional

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900", "--remote-debugging-pipe")


def find_chromium() -> Optional[str]:
    """The first of :data:`NAMES` on PATH, or ``None``."""
    return next((path for path in map(shutil.which, NAMES) if path), None)


class ChromiumError(RuntimeError):
    pass


class Chromium:
    """One headless browser. ``send`` runs a command and returns its result; ``open_page`` gives a :class:`Page`.

    Args:
        binary: the browser executable.
        profile: a fresh, empty folder for ``--user-data-dir``.
        log: file receiving the browser's stdout and stderr (read it when something fails).
        timeout: seconds to wait for any one reply or event.
    """

    def __init__(self, binary: str, profile: str, log: str, timeout: float = 30.0):
        self.timeout, self.log = timeout, log
        self._ids = itertools.count(1)
        self._buffer = b""
        self._events: List[Dict[str, Any]] = []
        to_child, self._to_browser = _pipe_above(4)
        self._from_browser, from_child = _pipe_above(4)
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            (os.POSIX_SPAWN_DUP2, to_child, 3),
            (os.POSIX_SPAWN_DUP2, from_child, 4),
        ]
        argv = [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"]
        try:
            self.pid = os.posix_spawn(binary, argv, dict(os.environ), file_actions=actions, setpgroup=0)
        except OSError:
            os.close(self._to_browser)
            os.close(self._from_browser)
            raise
        finally:
            os.close(to_child)  # the browser holds its own copies; ours would keep the pipes open after it dies
            os.close(from_child)
        self._closed = False

    # -- protocol --------------------------------------------------------------------------------------------
    def send(self, method: str, params: Optional[Dict[str, Any]] = None, session: Optional[str] = None) -> Dict:
        """Run ``method`` and return its ``result``; a protocol error or a timeout raises :class:`ChromiumError`."""
        msg_id = next(self._ids)
        msg: Dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._to_browser, data):]
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline, f"the reply to {method}")
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_event(self, method: str, session: Optional[str] = None) -> Dict[str, Any]:
        """The params of the first event ``method`` (from ``session``), waiting up to the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            for event in self._events:
                if event.get("method") == method and (session is None or event.get("sessionId") == session):
                    self._events.remove(event)
                    return event.get("params", {})
            self._events.append(self._read(deadline, f"event {method}"))

    def _read(self, deadline: float, what: str) -> Dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise ChromiumError(f"no {what} from Chromium within {self.timeout:.0f} s (browser log: {self.log})")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ChromiumError(f"Chromium closed the pipe while we waited for {what} (browser log: {self.log})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open_page(self, url: str) -> Page:
        """A new tab attached in flattened mode, navigated to ``url`` and waited on until its load event."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self.send("Page.enable", session=session)
        nav = self.send("Page.navigate", {"url": url}, session=session)
        if nav.get("errorText"):
            raise ChromiumError(f"navigating to {url}: {nav['errorText']}")
        self.wait_event("Page.loadEventFired", session)
        return page

    # -- lifetime --------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Ask the browser to quit; end its process group (the browser and its helpers) if it lingers, and any
        helper left behind. The leader is reaped last, so its group id cannot be reused by another process meanwhile."""
        if self._closed:
            return
        self._closed = True
        try:
            self.send("Browser.close")
        except (ChromiumError, OSError):
            pass
        try:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if _exited(self.pid, 5.0):
                    break
                _killpg(self.pid, sig)
            _killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    """A tab of :class:`Chromium` (a flattened target session)."""

    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript ``expression`` (promises awaited); a thrown exception raises."""
        result = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, self.session)
        if "exceptionDetails" in result:
            raise ChromiumError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, full_page: bool = True) -> bytes:
        """PNG bytes of the viewport, or of the whole page (``full_page``)."""
        params: Dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.browser.send("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        return base64.b64decode(self.browser.send("Page.captureScreenshot", params, self.session)["data"])


def _pipe_above(lowest: int):
    """``os.pipe()`` with both descriptors above ``lowest`` (close-on-exec), so that placing the child's ends at 3
    and 4 never overwrites the other end."""
    r, w = os.pipe()
    try:
        import fcntl

        return fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, lowest + 1), fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, lowest + 1)
    finally:
        os.close(r)
        os.close(w)


def _exited(pid: int, seconds: float) -> bool:
    """Whether child ``pid`` exits within ``seconds``, without reaping it (it stays a zombie, holding its id)."""
    deadline = time.monotonic() + seconds
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
