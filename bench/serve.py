"""pykvd serve against pykvd in-process, in the same run: what the HTTP server adds, what prompt reuse saves.

1. Overhead, at each of --threads thread counts. Per repeat two fresh prompts of --prompt-tokens
   tokens (bench/prompts.py, each starting at another sentence, so the server can reuse nothing):
   prompt A through `Session.stream` in this process and as a streamed /v1/completions request to a
   one-slot server with the same threads and context, prompt B through `Session.generate` and as a
   whole request; --n-predict greedy tokens past end-of-generation, the same text checked on both
   sides. Both sides are warm: one session (reset before each run) and one slot. Time to first token
   and decode time per token come from the first and last piece of text, the same way on both sides
   (for `Session.generate`, from its own prefill_s and decode_s). The runs alternate within a repeat,
   the order reversed every other repeat, so drift falls on both sides; each run records the share
   of the CPUs other processes used (from /proc), and medians come from the repeats where that
   stayed under 10 % (all repeats if fewer than 3 did). The bar: the server adds at most 10 % to
   decode time. Also the time to first token when prompt A is sent again at once (reused).
2. Twenty turns through the API (bench/chat.py's conversation, replies of at most 30 greedy tokens),
   one server per policy (full; streaming and kvdirect under --budget tokens): per turn the prompt
   tokens processed (usage: prompt_tokens minus cached_tokens) beside the tokens the turn added, the
   server's RSS (/proc), the KV and checkpoint bytes from /slots, and the client's wall time. The full
   server's replies are checked against `Session.chat` in-process, the others' against the full one.
3. Load: --load-requests requests from --load-clients concurrent clients on a two-slot server with a
   queue of 4, max_tokens 4: how many were answered and refused (503; a refused client pauses 0.2 s),
   latency, and the server's RSS after each half.

Usage: python bench/serve.py [--model smollm2] [--repeats 5] [--n-predict 128] [--prompt-tokens 320]
                             [--threads 1 2] [--quiet-wait 10] [--budget 128] [--checkpoint residuals]
                             [--policies full streaming kvdirect] [--turns 20]
                             [--load-requests 200] [--load-clients 8]
Writes bench/results/serve.json and serve.png.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import httpx

import pykvd
from chat import MAX_TOKENS, SYSTEM, TURNS
from common import parser, pyplot, save, write_report
from prompts import build_prompt

CHAT_THREADS = 2
N_CTX = 4096
DECODE_BAR = 1.10  # the server may add at most 10 % to decode time
READY = re.compile(r"listening on (http://\S+)")
CONTENDED = 0.10  # a run during which other processes used more than this share of the CPUs
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- what the rest of the machine did during a run ---------------------------------------------------


def _machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (steal included) since boot."""
    with open("/proc/stat", encoding="ascii") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = [int(x) for x in f.readline().split()[1:9]]
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def _process_cpu_s(pid: int | str) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


class CpuMeter:
    """The share of the machine's CPUs that processes other than this one and the server used during a run."""

    def __init__(self, server_pid: int):
        self._pids = ("self", server_pid)

    def __enter__(self) -> CpuMeter:
        self._start = (time.perf_counter(), _machine_cpu_s(), sum(_process_cpu_s(p) for p in self._pids))
        return self

    def __exit__(self, *exc) -> None:
        wall, machine, ours = (
            now - then
            for now, then in zip(
                (time.perf_counter(), _machine_cpu_s(), sum(_process_cpu_s(p) for p in self._pids)), self._start
            )
        )
        self.foreign_share = max(0.0, machine - ours) / (wall * (os.cpu_count() or 1))


def wait_for_quiet(server_pid: int, timeout_s: float) -> None:
    """Wait (at most timeout_s) for a second in which other processes leave the CPUs nearly idle."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        with CpuMeter(server_pid) as meter:
            time.sleep(1.0)
        if meter.foreign_share <= CONTENDED:
            return


# -- a server in a subprocess -----------------------------------------------------------------------


class Server:
    """`pykvd serve` on a free loopback port, as an app would spawn it."""

    def __init__(self, model: str, *args: str):
        command = [sys.executable, "-m", "pykvd", "serve", model, "--port", "0", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        ready = threading.Event()
        self.url = ""

        def read():
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.log.append(line)
                match = READY.search(line)
                if match:
                    self.url = match.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(300) or not self.url:
            self.stop()
            raise RuntimeError("pykvd serve did not start:\n" + "".join(self.log))
        self.http = httpx.Client(base_url=self.url, timeout=600)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

    def slot(self, index: int = 0) -> dict:
        return self.http.get("/slots").json()["slots"][index]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)


def model_args(name: str) -> list[str]:
    return ["--chat-template", "gemma"] if name == "gemma3" else []


# -- 1. overhead -----------------------------------------------------------------------------------------


def timed_pieces(pieces, start: float) -> dict:
    """Time to first piece and decode ms per token from the first to the last piece of text."""
    stamps = [time.perf_counter() for piece in pieces if piece]
    return {"ttft_s": stamps[0] - start, "last_s": stamps[-1] - start, "first": stamps[0], "last": stamps[-1]}


def decode_ms(first: float, last: float, n_tokens: int) -> float:
    return 1000 * (last - first) / (n_tokens - 1)


def run_generate(session, ids, n_predict: int) -> dict:
    session.reset()  # an empty cache, as the server's slot starts a prompt it shares nothing with
    steps_before = session.stats.n_decode_steps
    start = time.perf_counter()
    out = session.generate(ids, max_tokens=n_predict, stop_at_eog=False)
    wall = time.perf_counter() - start
    steps = session.stats.n_decode_steps - steps_before
    return {
        "wall_s": wall,
        "ttft_s": out.prefill_s + out.decode_s / len(out.tokens),  # prefill, then about one step's sampling
        "decode_ms_per_token": 1000 * out.decode_s / len(out.tokens),
        "decode_tok_s": steps / out.decode_s,
        "text": out.text,
    }


def run_stream(session, ids, n_predict: int) -> dict:
    session.reset()
    texts: list[str] = []

    def pieces():
        for piece in session.stream(ids, max_tokens=n_predict, stop_at_eog=False):
            texts.append(piece)
            yield piece

    start = time.perf_counter()
    t = timed_pieces(pieces(), start)
    return {
        "ttft_s": t["ttft_s"],
        "wall_s": t["last_s"],
        "decode_ms_per_token": decode_ms(t["first"], t["last"], n_predict),
        "text": "".join(texts),
    }


def completion_body(ids, n_predict: int, stream: bool) -> dict:
    body = {"prompt": [int(t) for t in ids], "max_tokens": n_predict, "temperature": 0, "ignore_eos": True}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def server_stream(server: Server, ids, n_predict: int) -> dict:
    start = time.perf_counter()
    texts, usage = [], {}

    def pieces():
        with server.http.stream("POST", "/v1/completions", json=completion_body(ids, n_predict, True)) as response:
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage.update(chunk["usage"])
                for choice in chunk["choices"]:
                    texts.append(choice["text"])
                    yield choice["text"]

    t = timed_pieces(pieces(), start)
    assert usage["completion_tokens"] == n_predict, usage
    return {
        "ttft_s": t["ttft_s"],
        "wall_s": t["last_s"],
        "decode_ms_per_token": decode_ms(t["first"], t["last"], n_predict),
        "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
        "text": "".join(texts),
    }


def server_whole(server: Server, ids, n_predict: int) -> dict:
    start = time.perf_counter()
    answer = server.http.post("/v1/completions", json=completion_body(ids, n_predict, False)).json()
    return {"wall_s": time.perf_counter() - start, "text": answer["choices"][0]["text"]}


def overhead(name: str, args, threads: int) -> dict:
    """Per repeat two fresh prompts: A through Session.stream and the streamed request (then A again: reused),
    B through Session.generate and the whole request. A warm session and a warm slot on either side."""
    server = Server(name, "-np", "1", "-t", str(threads), "-c", str(N_CTX), *model_args(name))
    runs: dict[str, list[dict]] = {
        label: [] for label in ("generate", "stream", "server_stream", "server_whole", "reused")
    }
    try:
        with pykvd.Model(name) as model, model.session(n_ctx=N_CTX, n_threads=threads) as session:
            prompts = [
                model.tokenize(build_prompt(model, args.prompt_tokens, start=i)) for i in range(2 * args.repeats + 2)
            ]
            methods = {
                "generate": lambda ids: run_generate(session, ids, args.n_predict),
                "stream": lambda ids: run_stream(session, ids, args.n_predict),
                "server_stream": lambda ids: server_stream(server, ids, args.n_predict),
                "server_whole": lambda ids: server_whole(server, ids, args.n_predict),
            }
            prompt_of = {"stream": 0, "server_stream": 0, "generate": 1, "server_whole": 1}
            for label, method in methods.items():  # warm-up: page the weights in, set up both sides
                method(prompts[-2 + prompt_of[label]])
            for repeat in range(args.repeats):
                wait_for_quiet(server.process.pid, args.quiet_wait)
                order = list(methods) if repeat % 2 == 0 else list(reversed(methods))
                for label in order:
                    time.sleep(0.3)  # let the other side's threads go idle
                    ids = prompts[2 * repeat + prompt_of[label]]
                    with CpuMeter(server.process.pid) as meter:
                        run = methods[label](ids)
                    runs[label].append({**run, "foreign_share": meter.foreign_share})
                    if label == "server_stream":  # the same prompt again, straight away: the slot still holds it
                        runs["reused"].append(server_stream(server, ids, args.n_predict))
                check_same_text(runs, repeat)
                print(
                    f"{name} overhead ({threads} threads) repeat {repeat + 1}/{args.repeats}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        server.stop()
    for label_runs in runs.values():
        for run in label_runs:
            run.pop("text", None)
    return {"runs": runs, "summary": overhead_summary(runs, args, threads)}


def check_same_text(runs: dict, repeat: int) -> None:
    """The server's greedy text is pykvd's, for both prompts."""
    pairs = (("stream", "server_stream"), ("stream", "reused"), ("generate", "server_whole"))
    for local, served in pairs:
        if runs[served][repeat]["text"] != runs[local][repeat]["text"]:
            raise AssertionError(f"{served} answered other text than {local} in repeat {repeat}")


def overhead_summary(runs: dict, args, threads: int) -> dict:
    """Medians over the repeats in which no run was contended, if there are at least 3; else over all."""
    timed = ("generate", "stream", "server_stream", "server_whole")
    clean = [i for i in range(args.repeats) if all(runs[k][i]["foreign_share"] <= CONTENDED for k in timed)]
    repeats = clean if len(clean) >= 3 else list(range(args.repeats))

    def median(label, key):
        return statistics.median(runs[label][i][key] for i in repeats)

    server = median("server_stream", "decode_ms_per_token")
    summary = {
        "prompt_tokens": args.prompt_tokens,
        "n_predict": args.n_predict,
        "threads": threads,
        "repeats_used": repeats,
        "clean_repeats": clean,
        "foreign_share": {label: median(label, "foreign_share") for label in timed},
        "decode_ms_per_token": {label: median(label, "decode_ms_per_token") for label in ("generate", "stream")},
        "ttft_s": {label: median(label, "ttft_s") for label in ("generate", "stream", "server_stream", "reused")},
        "wall_s": {label: median(label, "wall_s") for label in ("generate", "stream", "server_stream", "server_whole")},
    }
    summary["decode_ms_per_token"]["server_stream"] = server
    summary["server_decode_vs_stream"] = server / summary["decode_ms_per_token"]["stream"]
    summary["server_decode_vs_generate"] = server / summary["decode_ms_per_token"]["generate"]
    summary["server_whole_wall_vs_generate"] = summary["wall_s"]["server_whole"] / summary["wall_s"]["generate"]
    summary["paired_decode_ratios"] = [
        runs["server_stream"][i]["decode_ms_per_token"] / runs["stream"][i]["decode_ms_per_token"] for i in repeats
    ]
    summary["meets_bar"] = max(summary["server_decode_vs_stream"], summary["server_decode_vs_generate"]) <= DECODE_BAR
    return summary


# -- 2. twenty turns through the API --------------------------------------------------------------------


def policy_args(policy: str, args) -> list[str]:
    if policy == "full":
        return ["-c", str(N_CTX)]
    extra = ["--checkpoint", args.checkpoint] if policy == "kvdirect" else []
    return ["--kv-budget", str(args.budget), "--policy", policy, *extra]


def converse_through_api(server: Server, n_turns: int) -> list[dict]:
    messages: list[dict] = [{"role": "system", "content": SYSTEM}]
    turns: list[dict] = []
    held = 0  # tokens the slot held after the previous turn: its prompt and reply
    for i, text in enumerate(TURNS[:n_turns]):
        messages.append({"role": "user", "content": text})
        body = {"messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
        start = time.perf_counter()
        answer = server.http.post("/v1/chat/completions", json=body).json()
        wall = time.perf_counter() - start
        usage, reply = answer["usage"], answer["choices"][0]["message"]["content"]
        messages.append({"role": "assistant", "content": reply})
        slot = server.slot()
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        turns.append(
            {
                "turn": i + 1,
                "prompt_tokens": usage["prompt_tokens"],
                "cached_tokens": cached,
                "processed_tokens": usage["prompt_tokens"] - cached,
                "new_tokens": usage["prompt_tokens"] - held,  # what the turn added to the conversation
                "completion_tokens": usage["completion_tokens"],
                "wall_s": wall,
                "rss_bytes": server.rss_bytes(),
                "kv_bytes": slot["kv_bytes"],
                "kv_bytes_in_use": slot["kv_bytes_in_use"],
                "cells_in_use": slot["cells_in_use"],
                "checkpoint_bytes": slot["checkpoint_bytes"],
                "slot_tokens": slot["tokens"],
                "reply": reply,
            }
        )
        held = usage["prompt_tokens"] + usage["completion_tokens"]
    return turns


def in_process_replies(name: str, n_turns: int) -> tuple[list[str], float]:
    """The full cache's replies from Session.chat, and its wall time, for the same conversation."""
    template = "gemma" if name == "gemma3" else None
    replies = []
    with (
        pykvd.Model(name, chat_template=template) as model,
        model.session(n_ctx=N_CTX, n_threads=CHAT_THREADS) as session,
    ):
        start = time.perf_counter()
        for i, text in enumerate(TURNS[:n_turns]):
            first = [{"role": "system", "content": SYSTEM}] if i == 0 else []
            replies.append(session.chat(first + [{"role": "user", "content": text}], max_tokens=MAX_TOKENS))
        return replies, time.perf_counter() - start


def twenty_turns(name: str, args) -> dict:
    configs = {}
    for policy in args.policies:
        label = policy if policy == "full" else f"{policy}@{args.budget}"
        server = Server(name, "-np", "1", "-t", str(CHAT_THREADS), *policy_args(policy, args), *model_args(name))
        try:
            configs[label] = converse_through_api(server, args.turns)
        finally:
            server.stop()
        print(f"{name} {label}: twenty turns done", file=sys.stderr, flush=True)
    replies, in_process_wall = in_process_replies(name, args.turns)
    return {"budget": args.budget, "configs": configs, "summary": chat_summary(configs, replies, in_process_wall)}


def chat_summary(configs: dict, in_process: list[str], in_process_wall: float) -> dict:
    full = configs.get("full")
    out: dict = {"in_process_full_wall_s": in_process_wall}
    for label, turns in configs.items():
        reference = in_process if label == "full" else [t["reply"] for t in full] if full else None
        # Turn 1 processes its whole prompt; every later turn should process only about what it added.
        extra = [t["processed_tokens"] - t["new_tokens"] for t in turns[1:]]
        out[label] = {
            "wall_s": sum(t["wall_s"] for t in turns),
            "processed_tokens": sum(t["processed_tokens"] for t in turns),
            "new_tokens": sum(t["new_tokens"] for t in turns),
            "prompt_tokens_if_not_reused": sum(t["prompt_tokens"] for t in turns),
            "max_extra_processed_per_turn": max(extra) if extra else 0,
            "last_rss_bytes": turns[-1]["rss_bytes"],
            "kv_bytes": turns[-1]["kv_bytes"],
            "last_checkpoint_bytes": turns[-1]["checkpoint_bytes"],
            "replies_match": None if reference is None else [t["reply"] for t in turns] == reference,
        }
    return out


# -- 3. load -------------------------------------------------------------------------------------------------


def load(name: str, args) -> dict:
    server = Server(name, "-np", "2", "-c", str(N_CTX), "--queue", "4", *model_args(name))
    try:
        halves = []
        for half in range(2):
            n = args.load_requests // 2
            halves.append(hammer(server, n, first=half * n, n_clients=args.load_clients))
            halves[-1]["rss_bytes"] = server.rss_bytes()
        alive = server.process.poll() is None and server.http.get("/health").status_code == 200
    finally:
        server.stop()
    outcomes = halves[0]["outcomes"] + halves[1]["outcomes"]
    latencies = sorted(halves[0]["latencies"] + halves[1]["latencies"])
    return {
        "requests": len(outcomes),
        "clients": args.load_clients,
        "answered": outcomes.count(200),
        "refused_503": outcomes.count(503),
        "lost": len(outcomes) - outcomes.count(200) - outcomes.count(503),
        "alive_after": alive,
        "rss_after_first_half": halves[0]["rss_bytes"],
        "rss_after_second_half": halves[1]["rss_bytes"],
        "wall_s": halves[0]["wall_s"] + halves[1]["wall_s"],
        "latency_s": {"p50": latencies[len(latencies) // 2], "p95": latencies[int(0.95 * (len(latencies) - 1))]},
    }


def hammer(server: Server, n_requests: int, first: int, n_clients: int) -> dict:
    outcomes: list = []
    latencies: list[float] = []
    numbers, lock = itertools.count(first), threading.Lock()

    def client():
        with httpx.Client(base_url=server.url, timeout=120) as http:
            while True:
                with lock:
                    i = next(numbers)
                if i >= first + n_requests:
                    return
                body = {"messages": [{"role": "user", "content": f"Request {i}: name a colour."}], "max_tokens": 4}
                start = time.perf_counter()
                try:
                    status = http.post("/v1/chat/completions", json=body).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    outcomes.append(status)
                    if status == 200:
                        latencies.append(time.perf_counter() - start)
                if status == 503:
                    time.sleep(0.2)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"outcomes": outcomes, "latencies": latencies, "wall_s": time.perf_counter() - start}


# -- report ------------------------------------------------------------------------------------------------


def plot(results: dict, path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(results), 5, figsize=(27, 4.2 * len(results)), squeeze=False)
    for row, (name, result) in enumerate(results.items()):
        plot_overhead(axes[row][0], axes[row][1], name, result["overhead"])
        panels = (
            ("processed_tokens", "prompt tokens processed", 1),
            ("rss_bytes", "server RSS (MiB)", 2**20),
            ("wall_s", "turn wall time (s)", 1),
        )
        for col, (key, label, scale) in enumerate(panels, start=2):
            plot_turns(axes[row][col], result["chat"]["configs"], key, label, scale)
            axes[row][col].set_title(f"{name}: twenty turns through the API")
    save(fig, path)


def plot_overhead(decode_ax, ttft_ax, name: str, by_threads: dict) -> None:
    """Grouped bars: in-process and server, one group per thread count."""
    width = 0.2
    for i, result in enumerate(by_threads.values()):
        s = result["summary"]
        for j, method in enumerate(("generate", "stream", "server_stream")):
            decode_ax.bar(
                i + (j - 1) * width,
                s["decode_ms_per_token"][method],
                width,
                color=f"C{j}",
                label=method if i == 0 else None,
            )
        for j, method in enumerate(("stream", "server_stream", "reused")):
            ttft_ax.bar(
                i + (j - 1) * width, s["ttft_s"][method], width, color=f"C{j + 1}", label=method if i == 0 else None
            )
        decode_ax.annotate(
            f"{s['server_decode_vs_stream']:.3f}x",
            (i, s["decode_ms_per_token"]["server_stream"]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    for ax, ylabel in ((decode_ax, "decode ms per token (median)"), (ttft_ax, "time to first token (s, median)")):
        ax.set_xticks(range(len(by_threads)), list(by_threads))
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    first = next(iter(by_threads.values()))["summary"]
    decode_ax.set_title(f"{name}: decode, in-process vs server (server / stream)")
    ttft_ax.set_title(f"{name}: {first['prompt_tokens']}-token prompt; reused = the same prompt again")


def plot_turns(ax, configs: dict, key: str, label: str, scale: float) -> None:
    for config, turns in configs.items():
        ax.plot([t["turn"] for t in turns], [t[key] / scale for t in turns], marker="o", label=config)
    if key == "processed_tokens":
        turns = next(iter(configs.values()))
        ax.plot([t["turn"] for t in turns], [t["new_tokens"] for t in turns], "k--", label="tokens the turn added")
        ax.plot([t["turn"] for t in turns], [t["prompt_tokens"] for t in turns], "k:", label="whole prompt")
        ax.set_yscale("log")
    if key == "wall_s":
        ax.set_yscale("log")
    ax.set_xlabel("turn")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)


def main(argv=None) -> int:
    p = parser(__doc__, "serve")
    p.set_defaults(model=["smollm2"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n-predict", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=320)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts the overhead is measured at")
    p.add_argument("--quiet-wait", type=float, default=10.0, help="seconds to wait for a quiet machine per repeat")
    p.add_argument("--budget", type=int, default=128)
    p.add_argument("--policies", nargs="+", default=["full", "streaming", "kvdirect"])
    p.add_argument("--checkpoint", default="residuals", choices=["tokens", "residuals"])
    p.add_argument("--turns", type=int, default=len(TURNS))
    p.add_argument("--load-requests", type=int, default=200)
    p.add_argument("--load-clients", type=int, default=8)
    args = p.parse_args(argv)
    results = {}
    for name in args.model:
        results[name] = {
            "overhead": {f"{t} threads": overhead(name, args, t) for t in args.threads},
            "chat": twenty_turns(name, args),
            "load": load(name, args),
        }
        print_summary(name, results[name])
    write_report(args, {"decode_bar": DECODE_BAR, "models": results}, lambda path: plot(results, path))
    return 0


def print_summary(name: str, result: dict) -> None:
    for label, overhead_result in result["overhead"].items():
        s = overhead_result["summary"]
        print(
            f"{name} ({label}): decode ms/token generate {s['decode_ms_per_token']['generate']:.2f}, stream "
            f"{s['decode_ms_per_token']['stream']:.2f}, server {s['decode_ms_per_token']['server_stream']:.2f} "
            f"({s['server_decode_vs_stream']:.3f}x stream, {s['server_decode_vs_generate']:.3f}x generate); "
            f"TTFT {s['ttft_s']['stream']:.3f} s in-process, {s['ttft_s']['server_stream']:.3f} s server, "
            f"{s['ttft_s']['reused']:.3f} s reused; clean repeats {s['clean_repeats']}",
            file=sys.stderr,
        )
    for label, row in result["chat"]["summary"].items():
        print(f"{name} chat {label}: {json.dumps(row)}", file=sys.stderr)
    print(f"{name} load: {json.dumps(result['load'])}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
