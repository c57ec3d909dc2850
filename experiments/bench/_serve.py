"""A helper process that answers one JSON line per request line (the pfns sides of the benches,
run in `.bench-venv` so torch never enters probnet's environment)."""

import json
import os
import subprocess


class LineServer:
    """`cmd` in a long-lived subprocess: it prints a JSON line with `"ready": true` (kept in
    `info`), then one JSON line per line written to it."""

    def __init__(self, cmd: list[str]):
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env
        )
        self.info: dict = {}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"pfns helper exited with code {code} (see its stderr above)")
        return json.loads(line)

    def wait_ready(self) -> None:
        """Wait for the helper's imports and warm-up (they overlap probnet's compilation)."""
        self.info = self._read()
        if not self.info.get("ready"):
            raise RuntimeError(f"pfns helper did not start: {self.info}")

    def request(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
