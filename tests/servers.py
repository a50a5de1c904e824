"""A live `pykvd serve` for tests: started as a user starts it, in a subprocess on a free loopback port.

`--port 0` lets the system pick the port; the server prints the one it got ("listening on
http://127.0.0.1:PORT") once the model is loaded, so a test never races another for a port.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import httpx
import openai

READY = re.compile(r"listening on (http://\S+)")
START_TIMEOUT_S = 180  # loading a model on a busy 2-core machine


class Server:
    def __init__(self, *args: str, api_key: str | None = None):
        self.api_key = api_key
        key = ["--api-key", api_key] if api_key else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pykvd", "serve", "--port", "0", *key, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        # Both pipes are drained for the server's whole life: a full pipe would block it.
        threading.Thread(target=self._read_stderr, daemon=True).start()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if not self._ready.wait(START_TIMEOUT_S) or not self.url:
            self.stop()
            raise RuntimeError("pykvd serve did not start:\n" + "".join(self.stderr))

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            match = READY.search(line)
            if match:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()  # ended without saying it listens

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout.append(line)

    # -- clients ------------------------------------------------------------------------------

    def client(self, *, api_key: str | None = None, timeout: float = 300) -> openai.OpenAI:
        """The real OpenAI client, pointed at this server (no retries: a 503 must be seen, not retried)."""
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=api_key or self.api_key or "none", max_retries=0, timeout=timeout
        )

    def http(self, *, authorized: bool = True, timeout: float = 300) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if authorized and self.api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def slots(self) -> dict:
        with self.http() as http:
            response = http.get("/slots")
            response.raise_for_status()
            return response.json()

    def wait_until_idle(self, timeout: float) -> float:
        """Seconds until /slots shows no slot processing and nobody waiting; TimeoutError after timeout."""
        start = time.perf_counter()
        while True:
            report = self.slots()
            if not any(s["is_processing"] for s in report["slots"]) and report["n_waiting"] == 0:
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"slots still busy after {timeout} s: {report['slots']}")
            time.sleep(0.02)

    def rss_bytes(self) -> int:
        """The server process's resident memory, from /proc."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
