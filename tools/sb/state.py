"""The state directory (.sb/ by default) and the state file that records what `up` started."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time

from ports import Ports
from util import SbError, alive

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
STATE_VERSION = 1


def default_state_dir(port_offset: int) -> str:
    """.sb/ for the default ports; .sb-<offset>/ otherwise, so two platforms never share one."""
    return os.path.join(REPO, ".sb" if port_offset == 0 else f".sb-{port_offset}")


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class State:
    """Paths under the state dir + the persisted component table."""

    def __init__(self, state_dir: str):
        self.dir = os.path.abspath(state_dir)
        self.file = os.path.join(self.dir, "state.json")
        self.data: dict = {}
        self._lock_fd = None

    # --- paths -------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    @property
    def conf_dir(self) -> str:
        return self.path("conf")

    @property
    def logs_dir(self) -> str:
        return self.path("logs")

    @property
    def stack_file(self) -> str:
        return self.path("stack.json")

    def log(self, name: str) -> str:
        return os.path.join(self.logs_dir, f"{name}.log")

    # --- lock: one sb up/down (or one supervisor restart) at a time per state dir
    def try_lock(self) -> bool:
        """Take the state dir's lock if it is free; the supervisor holds it for a few
        milliseconds while it records a restart."""
        os.makedirs(self.dir, exist_ok=True)
        fd = open(self.path(".lock"), "w")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fd.close()
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            self._lock_fd.close()  # closing the file releases the flock
            self._lock_fd = None

    def lock(self, wait: float = 5.0) -> None:
        """For `up` and `down`: waits out a supervisor's short hold, not another command."""
        deadline = time.monotonic() + wait
        while not self.try_lock():
            if time.monotonic() >= deadline:
                raise SbError(f"another ./sb command is working on {self.dir}; wait for it to finish")
            time.sleep(0.05)

    # --- persisted data ----------------------------------------------------
    def load(self) -> bool:
        try:
            with open(self.file) as f:
                self.data = json.load(f)
            return True
        except FileNotFoundError:
            self.data = {}
            return False
        except json.JSONDecodeError as e:
            raise SbError(f"corrupt state file {self.file}: {e}") from None

    def save(self) -> None:
        self.data["version"] = STATE_VERSION
        write_atomic(self.file, json.dumps(self.data, indent=2) + "\n")

    @property
    def layout(self) -> dict:
        return self.data.get("layout", {})

    @property
    def components(self) -> list[dict]:
        return self.data.setdefault("components", [])

    def ports(self) -> Ports:
        return Ports(int(self.layout.get("port_offset", 0)))

    def get(self, name: str) -> dict | None:
        for c in self.components:
            if c["name"] == name:
                return c
        return None

    def put(self, comp: dict) -> None:
        """Insert or replace by name, keeping first-insertion order; persists immediately."""
        for i, c in enumerate(self.components):
            if c["name"] == comp["name"]:
                self.components[i] = comp
                break
        else:
            self.components.append(comp)
        self.save()

    def remove(self, name: str) -> None:
        self.data["components"] = [c for c in self.components if c["name"] != name]
        self.save()

    def running(self, name: str) -> bool:
        c = self.get(name)
        return bool(c) and alive(c.get("pid"), c.get("starttime"))

    def any_running(self) -> bool:
        return any(alive(c.get("pid"), c.get("starttime")) for c in self.components)
