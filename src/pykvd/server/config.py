"""What `pykvd serve` was started with: the model, the slots, the network side and the request defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import models as model_registry
from ..sampling import SamplingParams

DEFAULT_HOST = "127.0.0.1"  # loopback unless told otherwise: the API runs a model for whoever reaches it
DEFAULT_PORT = 8080  # llama-server's
DEFAULT_QUEUE = 64


@dataclass(frozen=True)
class ServerConfig:
    model: str = model_registry.DEFAULT_MODEL
    alias: str | None = None  # the model's id in the API (default: its name or file name)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    parallel: int = 1  # slots, each its own session
    queue: int = DEFAULT_QUEUE  # requests that may wait for a slot; more get 503
    api_key: str | None = None
    ctx_size: int | None = None  # total cells over all slots, as llama-server's -c (0: the trained context)
    batch_size: int = 512
    threads: int | None = None  # per slot (default: the usable CPUs shared among the slots)
    chat_template: str | None = None
    exact: bool = True
    sampling: SamplingParams = field(default_factory=SamplingParams)  # for fields a request leaves out
    max_tokens: int | None = None  # when a request gives none: None generates to the end or the context
    kv_budget: str | None = None  # per slot
    policy: str | None = None
    n_sink: int = 4
    checkpoint: str | None = None
    draft: int | None = None
    verbose: bool = False

    @property
    def model_id(self) -> str:
        if self.alias:
            return self.alias
        return self.model if self.model in model_registry.MODELS else Path(self.model).name

    def threads_per_slot(self) -> int:
        if self.threads is not None:
            return self.threads
        return max(1, _usable_cpus() // self.parallel)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 4
