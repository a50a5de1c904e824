"""pykvd.Llama: the interface of llama-cpp-python's ``Llama`` (0.3.36) over a pykvd Session.

Code written for llama-cpp-python switches with one import::

    from pykvd import Llama  # instead of: from llama_cpp import Llama

    llm = Llama(model_path="model.gguf", n_ctx=2048)
    llm("The capital of France is", max_tokens=16, temperature=0)["choices"][0]["text"]
    llm.create_chat_completion([{"role": "user", "content": "Hi"}])["choices"][0]["message"]["content"]

Completions, chat completions and their stream chunks are dicts of the same shape as
llama-cpp-python's. pykvd's own keywords bound the memory: ``Llama(..., kv_budget=256,
policy="kvdirect")`` keeps at most 256 tokens' K/V in cells and still gives the full cache's output.

What differs from llama-cpp-python:
- keywords about devices, logging and performance (split_mode, main_gpu, tensor_split, use_mlock,
  n_threads_batch, logits_all, offload_kqv, op_offload, no_perf, numa, lora_scale, spm_infill,
  verbose, tfs_z, mirostat_tau, mirostat_eta) are accepted and ignored;
- keywords that would change results in ways pykvd does not implement (LoRA, kv_overrides, RoPE/YaRN
  overrides, embeddings, KV types, grammars, logprobs, logit_bias, frequency/presence penalties,
  typical_p, mirostat, tools, infill suffix, custom chat handlers, tokenizers or draft models) raise
  ArgumentError unless they have llama-cpp-python's default value; unknown keywords raise
  ArgumentTypeError;
- ``flash_attn=True`` leaves pykvd's exact profile for llama.cpp's own kernel choice (flash attention
  auto, repacked weights, no batch invariance); the exact profile attends with flash attention too;
- chat prompts come from the GGUF's own template, rendered with Jinja2 as llama-cpp-python does when
  jinja2 is installed, else by llama.cpp's template engine; ``chat_format`` names one of llama.cpp's
  built-in templates ("chatml", "llama2", "llama3", "gemma", ...), not llama-cpp-python's Python
  formatters;
- ``repeat_penalty`` also counts prompt tokens (the last ``last_n_tokens_size`` of the sequence), as
  pykvd's sampler does; llama-cpp-python's counts only generated ones;
- bad input raises pykvd's exceptions (pykvd.PykvdError subclasses, which also derive from ValueError,
  TypeError, ... as fits) before anything changes.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from .api import Model
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    ContextOverflowError,
    PromptError,
    SamplingError,
    SessionClosedError,
)
from .integers import INT32_MAX, is_plain_number
from .prompt_reuse import continue_from
from .sampling import SamplingParams
from .session import Session
from .stop_strings import StopStrings

Completion = Dict[str, Any]
CompletionChunk = Dict[str, Any]
ChatCompletion = Dict[str, Any]
ChatCompletionChunk = Dict[str, Any]
Message = Dict[str, Any]

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "pick a random seed"
_MAX_THREADS = 512  # ggml's CPU backend runs at most 512 threads

# llama-cpp-python keywords that change nothing in pykvd: device placement, logging, timing, hints.
_IGNORED_OPTIONS = frozenset(
    {
        "split_mode",
        "main_gpu",
        "tensor_split",
        "use_mlock",
        "n_threads_batch",
        "logits_all",
        "offload_kqv",
        "op_offload",
        "no_perf",
        "numa",
        "lora_scale",
        "spm_infill",
    }
)

# llama-cpp-python keywords pykvd honours only at their default: any other value would change the
# model's output in a way pykvd does not implement, so it is refused rather than ignored.
_DEFAULT_ONLY_OPTIONS: Dict[str, Any] = {
    "vocab_only": False,
    "kv_overrides": None,
    "rope_scaling_type": -1,
    "pooling_type": -1,
    "attention_type": -1,
    "rope_freq_base": 0.0,
    "rope_freq_scale": 0.0,
    "yarn_ext_factor": -1.0,
    "yarn_attn_factor": 1.0,
    "yarn_beta_fast": 32.0,
    "yarn_beta_slow": 1.0,
    "yarn_orig_ctx": 0,
    "embedding": False,
    "lora_base": None,
    "lora_path": None,
    "chat_handler": None,
    "draft_model": None,
    "tokenizer": None,
    "type_k": None,
    "type_v": None,
}

_F16 = 1  # ggml's type id of F16, the only KV type (type_k, type_v) pykvd allocates

# The sampling keywords of create_completion / create_chat_completion that pykvd's sampler chain lacks.
_UNSUPPORTED_SAMPLING: Dict[str, Any] = {
    "suffix": None,
    "typical_p": 1.0,
    "logprobs": None,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "mirostat_mode": 0,
    "stopping_criteria": None,
    "logits_processor": None,
    "grammar": None,
    "logit_bias": None,
}

_UNSUPPORTED_CHAT: Dict[str, Any] = {
    "functions": None,
    "function_call": None,
    "tools": None,
    "tool_choice": None,
    "response_format": None,
    "top_logprobs": None,
}

# llama-cpp-python's own chat formatter names, and the nearest llama.cpp built-in template.
_LLAMA_CPP_PYTHON_FORMATS = {"llama-2": "llama2", "llama-3": "llama3", "mistral-instruct": "mistral-v1"}
_GGUF_TEMPLATE = "chat_template.default"  # llama-cpp-python's name for the GGUF's own template


class Llama:
    """A GGUF model and one pykvd Session, behind llama-cpp-python's ``Llama`` interface.

    ``model_path`` is a GGUF path (or a name pykvd.models can fetch, such as "smollm2"). ``n_ctx`` is
    the context window (0: the model's trained context); ``seed`` -1 or 0xFFFFFFFF draws a fresh seed
    for every completion, any other value makes each completion reproducible. pykvd's own keywords go
    to the Session: ``kv_budget`` (tokens, or bytes such as "64MiB"), ``policy``, ``n_sink``,
    ``checkpoint`` and ``draft`` (see pykvd.Session); with a budget the KV cache holds that many
    cells while prompt plus completion may still fill ``n_ctx``.

    Like llama-cpp-python, a prompt that extends what the session already holds (the previous
    prompt and completion, as in a chat) only processes the new tokens; any other prompt starts
    over. One call at a time: a call made while a stream is unfinished raises SessionBusyError.
    """

    def __init__(
        self,
        model_path: Union[str, os.PathLike[str]],
        *,
        n_gpu_layers: int = 0,
        use_mmap: bool = True,
        seed: int = LLAMA_DEFAULT_SEED,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_ubatch: int = 512,
        n_threads: Optional[int] = None,
        flash_attn: bool = False,
        swa_full: Optional[bool] = None,
        last_n_tokens_size: int = 64,
        chat_format: Optional[str] = None,
        verbose: bool = True,
        kv_budget: Union[int, str, None] = None,
        policy: Optional[str] = None,
        n_sink: int = 4,
        checkpoint: Optional[str] = None,
        draft: Optional[int] = None,
        **options: Any,
    ):
        self._session: Optional[Session] = None
        self._model: Optional[Model] = None
        _check_options(options)
        _check_int("n_ctx", n_ctx, 0, INT32_MAX)
        _check_int("n_batch", n_batch, 1, INT32_MAX)
        _check_int("n_ubatch", n_ubatch, 1, INT32_MAX)
        if n_threads is not None:
            _check_int("n_threads", n_threads, 1, _MAX_THREADS)
        _check_int("last_n_tokens_size", last_n_tokens_size, 0, INT32_MAX)
        _check_bool("flash_attn", flash_attn)
        if swa_full is not None:
            _check_bool("swa_full", swa_full)
        if chat_format is not None and not isinstance(chat_format, str):
            raise ArgumentTypeError(f"chat_format must be a str or None, not {type(chat_format).__name__}")
        self._seed = _checked_seed(seed)
        self.verbose = verbose
        self.model_path = os.fspath(model_path) if isinstance(model_path, (str, os.PathLike)) else model_path
        self.last_n_tokens_size = last_n_tokens_size
        self._model = Model(model_path, n_gpu_layers=n_gpu_layers, use_mmap=use_mmap, exact=not flash_attn)
        try:
            self._window = n_ctx or self._model.info.n_ctx_train
            self._bounded = kv_budget is not None
            if self._bounded and self._window > self._model.info.n_ctx_train:
                raise ArgumentError(
                    f"with a kv_budget, n_ctx cannot exceed the model's trained context "
                    f"({self._model.info.n_ctx_train} tokens), not {n_ctx}"
                )
            self.n_batch = min(self._window, n_batch)
            self._chat = _ChatFormatter(self._model, chat_format)
            self.chat_format = chat_format if chat_format is not None else _GGUF_TEMPLATE
            self._session = self._model.session(
                n_ctx=None if self._bounded else self._window,
                n_batch=self.n_batch,
                n_ubatch=min(self.n_batch, n_ubatch),
                n_threads=n_threads,
                swa_full=True if swa_full is None else swa_full,
                kv_budget=kv_budget,
                policy=policy,
                n_sink=n_sink,
                checkpoint=checkpoint,
                draft=draft,
            )
        except BaseException:
            self._model.close()
            raise

    # -- lifetime ------------------------------------------------------------

    @property
    def session(self) -> Session:
        """The pykvd Session behind this object (stats, policy, capture, ...)."""
        if self._session is None:
            raise SessionClosedError("the model failed to load")
        return self._session

    @property
    def pykvd_model(self) -> Model:
        """The pykvd Model behind this object (info, chat template, tokenizer)."""
        if self._model is None:
            raise SessionClosedError("the model failed to load")
        return self._model

    def close(self) -> None:
        """Free the context and the weights; later calls raise SessionClosedError."""
        if self._session is not None:
            self._session.close()
        if self._model is not None:
            self._model.close()

    def __enter__(self) -> Llama:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def reset(self) -> None:
        """Forget the tokens the session holds (the next prompt is processed in full)."""
        self.session.reset()

    def set_seed(self, seed: int) -> None:
        """The seed of later completions that give none (-1 or 0xFFFFFFFF: a fresh one each time)."""
        self._seed = _checked_seed(seed)

    # -- model facts -----------------------------------------------------------

    def n_ctx(self) -> int:
        """The context window: the most tokens prompt plus completion may take."""
        return self._window if self._bounded else self.session.n_ctx

    def n_vocab(self) -> int:
        return self.pykvd_model.info.n_vocab

    def n_embd(self) -> int:
        return self.pykvd_model.info.n_embd

    def token_eos(self) -> int:
        return int(self.pykvd_model._handle().eos)

    def token_bos(self) -> int:
        return int(self.pykvd_model._handle().bos)

    @property
    def metadata(self) -> Dict[str, str]:
        """The GGUF's metadata, every value as text (as llama-cpp-python's ``metadata``)."""
        return dict(self.pykvd_model._handle().metadata())

    # -- tokenizer -------------------------------------------------------------

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> List[int]:
        """Token ids of UTF-8 text; add_bos adds the model's BOS (if it wants one), special parses
        special tokens such as "<|im_start|>"."""
        if not isinstance(text, (bytes, bytearray)):
            raise ArgumentTypeError(f"text must be bytes (UTF-8), not {type(text).__name__}")
        try:
            decoded = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PromptError(f"text is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
        ids = self.pykvd_model.tokenize(decoded, add_special=bool(add_bos), parse_special=bool(special))
        return [int(t) for t in ids]

    def detokenize(
        self, tokens: Sequence[int], prev_tokens: Optional[Sequence[int]] = None, special: bool = False
    ) -> bytes:
        """The bytes of the tokens' pieces, joined (prev_tokens is accepted and unused, as in
        llama-cpp-python's own tokenizer)."""
        model = self.pykvd_model
        ids = model.check_tokens(tokens)
        data = b"".join(model.token_to_bytes(int(t), special=bool(special)) for t in ids)
        # A SentencePiece BOS leaves the first word's leading space; llama-cpp-python drops it.
        if len(ids) and int(ids[0]) == self.token_bos() and data.startswith(b" "):
            data = data[1:]
        return data

    # -- completions -----------------------------------------------------------

    def __call__(
        self, prompt: Union[str, List[int]], *args: Any, **kwargs: Any
    ) -> Union[Completion, Iterator[CompletionChunk]]:
        """create_completion(prompt, ...)."""
        return self.create_completion(prompt, *args, **kwargs)

    def create_completion(
        self,
        prompt: Union[str, List[int]],
        suffix: Optional[str] = None,
        max_tokens: Optional[int] = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: Optional[int] = None,
        echo: bool = False,
        stop: Union[str, List[str], None] = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: Optional[int] = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: Optional[str] = None,
        stopping_criteria: Any = None,
        logits_processor: Any = None,
        grammar: Any = None,
        logit_bias: Optional[Dict[int, float]] = None,
    ) -> Union[Completion, Iterator[CompletionChunk]]:
        """Continue ``prompt`` (text, or token ids taken as they are): the completion dict, or with
        stream=True an iterator of chunks. max_tokens None or <= 0 fills the context window. Stop
        strings end the text before them (finish_reason "stop", as for an end-of-generation token)."""
        _check_unsupported(
            _UNSUPPORTED_SAMPLING,
            suffix=suffix,
            typical_p=typical_p,
            logprobs=logprobs,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            mirostat_mode=mirostat_mode,
            stopping_criteria=stopping_criteria,
            logits_processor=logits_processor,
            grammar=grammar,
            logit_bias=logit_bias,
        )
        _check_bool("echo", echo)
        _check_bool("stream", stream)
        ids = self._prompt_ids(prompt)
        sampling = self._sampling(temperature, top_p, top_k, min_p, repeat_penalty, seed)
        request = self._request(ids, max_tokens, sampling, _checked_stops(stop), model)
        run = self._start(request)
        if stream:
            return self._completion_chunks(run, request)
        text = "".join(run.deltas())
        if echo:
            text = (prompt if isinstance(prompt, str) else self.detokenize(ids).decode("utf-8", "ignore")) + text
        return _completion(request, run, text)

    def create_chat_completion(
        self,
        messages: List[Message],
        functions: Any = None,
        function_call: Any = None,
        tools: Any = None,
        tool_choice: Any = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: Union[str, List[str], None] = None,
        seed: Optional[int] = None,
        response_format: Any = None,
        max_tokens: Optional[int] = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: Optional[str] = None,
        logits_processor: Any = None,
        grammar: Any = None,
        logit_bias: Optional[Dict[int, float]] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
    ) -> Union[ChatCompletion, Iterator[ChatCompletionChunk]]:
        """The assistant's reply to ``messages`` (dicts with "role" and "content"), formatted with the
        model's chat template: the chat.completion dict, or with stream=True an iterator of chunks.
        A conversation that grows turn by turn reuses the cache of the turns before."""
        _check_unsupported(
            _UNSUPPORTED_CHAT,
            functions=functions,
            function_call=function_call,
            tools=tools,
            tool_choice=tool_choice,
            response_format=response_format,
            top_logprobs=top_logprobs,
        )
        _check_unsupported(
            _UNSUPPORTED_SAMPLING,
            typical_p=typical_p,
            logprobs=None if logprobs is False else logprobs,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            mirostat_mode=mirostat_mode,
            logits_processor=logits_processor,
            grammar=grammar,
            logit_bias=logit_bias,
        )
        _check_bool("stream", stream)
        prompt, template_stops = self._chat.format(messages)
        ids = self._prompt_ids_of_chat(prompt)
        sampling = self._sampling(temperature, top_p, top_k, min_p, repeat_penalty, seed)
        request = self._request(ids, max_tokens, sampling, _checked_stops(stop) + template_stops, model)
        run = self._start(request)
        if stream:
            return self._chat_chunks(run, request)
        return _chat_completion(request, run, "".join(run.deltas()))

    # -- the generation behind both ----------------------------------------------

    def _request(
        self, ids: List[int], max_tokens: Optional[int], sampling: SamplingParams, stops: List[str], model
    ) -> _Request:
        return _Request(ids, self._checked_max_tokens(max_tokens, len(ids)), sampling, stops, self._model_name(model))

    def _start(self, request: _Request) -> _Run:
        """Begin generating after the request's prompt, processing only where it departs from what the
        session holds (exact under full and kvdirect, as llama-cpp-python keeps its longest common prefix)."""
        return self._stream(continue_from(self.session, request.ids), request)

    def _stream(self, new_ids: Optional[List[int]], request: _Request) -> _Run:
        pieces = self.session.stream(new_ids, max_tokens=request.max_tokens, sampling=request.sampling)
        return _Run(self.session, pieces, request)

    def _completion_chunks(self, run: _Run, request: _Request) -> Iterator[CompletionChunk]:
        for delta in run.deltas():
            yield _completion_chunk(request, delta, None)
        yield _completion_chunk(request, "", run.finish_reason)

    def _chat_chunks(self, run: _Run, request: _Request) -> Iterator[ChatCompletionChunk]:
        yield _chat_chunk(request, {"role": "assistant"}, None)
        for delta in run.deltas():
            yield _chat_chunk(request, {"content": delta}, None)
        yield _chat_chunk(request, {}, run.finish_reason)

    # -- checking a request --------------------------------------------------------

    def _prompt_ids(self, prompt: Union[str, List[int]]) -> List[int]:
        """A text prompt's tokens with BOS where the model wants it (special tokens parsed); a list of
        ids as it is. An empty text starts from BOS alone."""
        if isinstance(prompt, str):
            return self.tokenize(_encoded(prompt), add_bos=True, special=True) or self._bos_alone()
        if isinstance(prompt, (list, tuple)):
            if not prompt:
                raise PromptError("prompt has no tokens")
            return [int(t) for t in self.pykvd_model.check_tokens(list(prompt))]
        raise ArgumentTypeError(f"prompt must be a str or a list of token ids, not {type(prompt).__name__}")

    def _bos_alone(self) -> List[int]:
        bos = self.token_bos()
        if bos < 0:
            raise PromptError("prompt is empty and the model has no BOS token to start from")
        return [bos]

    def _prompt_ids_of_chat(self, prompt: str) -> List[int]:
        if not prompt:
            raise PromptError("the chat template produced an empty prompt")
        # A Jinja template writes the BOS text itself when the model wants one; llama.cpp's do not.
        ids = self.tokenize(_encoded(prompt), add_bos=self._chat.adds_bos, special=True)
        if not ids:
            raise PromptError("the chat prompt has no tokens")
        return ids

    def _checked_max_tokens(self, max_tokens: Optional[int], n_prompt: int) -> int:
        window = self.n_ctx()
        if n_prompt >= window:
            raise ContextOverflowError(f"the prompt has {n_prompt} tokens: it does not fit the context of {window}")
        if max_tokens is not None and not _is_int(max_tokens):
            raise ArgumentError(f"max_tokens must be an integer or None, not {max_tokens!r}")
        if max_tokens is None or max_tokens <= 0:
            return window - n_prompt  # unlimited: the rest of the window
        return min(max_tokens, window - n_prompt)

    def _sampling(self, temperature, top_p, top_k, min_p, repeat_penalty, seed) -> SamplingParams:
        if is_plain_number(temperature) and temperature < 0:
            # llama-cpp-python draws from the softmax of the raw logits, with no truncation.
            temperature, top_k, top_p, min_p = 1.0, 0, 1.0, 0.0
        if _is_int(top_k) and top_k < 0:
            top_k = 0  # llama.cpp's top-k keeps every token for k <= 0; pykvd spells that 0
        return SamplingParams(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            repeat_last_n=self.last_n_tokens_size,
            seed=self._seed if seed is None else _checked_seed(seed),
        )

    def _model_name(self, model: Optional[str]) -> str:
        if model is None:
            return str(self.model_path)
        if not isinstance(model, str):
            raise ArgumentTypeError(f"model must be a str or None, not {type(model).__name__}")
        return model


@dataclass
class _Request:
    """One completion request, checked: the prompt's tokens and how to generate after them."""

    ids: List[int]
    max_tokens: int
    sampling: SamplingParams
    stops: List[str]
    model_name: str
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4()}")
    created: int = field(default_factory=lambda: int(time.time()))


class _Run:
    """A completion as it is generated: text deltas without the stop strings, then how it finished.

    Text that could be the start of a stop string is held back until the next piece shows it is not.
    """

    def __init__(self, session: Session, pieces: Iterator[str], request: _Request):
        self._session, self._pieces, self._request = session, pieces, request
        self.finish_reason = "length"
        self.n_completion = 0

    def deltas(self) -> Iterator[str]:
        stops = StopStrings(self._request.stops)
        yield from stops.cut(self._pieces)  # closing the pieces ends the session's stream
        stopped = stops.stopped
        # The session holds the prompt, then every generated token (an end-of-generation token is not kept).
        self.n_completion = len(self._session.tokens) - len(self._request.ids)
        self.finish_reason = "stop" if stopped or self.n_completion < self._request.max_tokens else "length"


class _ChatFormatter:
    """Messages to a prompt: the GGUF's template through Jinja2 (as llama-cpp-python renders it) when
    jinja2 is installed, else llama.cpp's template engine; or a llama.cpp built-in template by name."""

    def __init__(self, model: Model, chat_format: Optional[str]):
        self._model = model
        self._builtin: Optional[str] = None
        self._jinja: Optional[Callable[..., str]] = None
        if chat_format is not None and chat_format != _GGUF_TEMPLATE:
            self._builtin = _checked_builtin(model, chat_format)
        elif model.chat_template is not None:
            self._jinja = _compile_jinja(model.chat_template)
        self.adds_bos = self._jinja is None

    def format(self, messages: Sequence[Message]) -> tuple[str, List[str]]:
        """The prompt, and the stop strings the template implies (its EOS text)."""
        checked = _checked_messages(messages)
        if self._jinja is None and self._builtin is None and self._model.chat_template is None:
            raise PromptError(
                f"{self._model.path.name} has no chat template: pass chat_format= "
                "(a llama.cpp built-in template name such as 'chatml' or 'gemma')"
            )
        if self._jinja is None:
            pairs = [{"role": m["role"], "content": m.get("content") or ""} for m in checked]
            return self._model.apply_chat_template(pairs, template=self._builtin), []
        handle = self._model._handle()
        eos, bos = (_token_text(self._model, t) for t in (handle.eos, handle.bos))
        try:
            prompt = self._jinja(messages=checked, bos_token=bos, eos_token=eos, add_generation_prompt=True)
        except Exception as exc:  # a template error or raise_exception(): the messages do not fit it
            raise PromptError(f"the chat template failed on these messages: {exc}") from None
        return prompt, [eos] if eos else []


def _compile_jinja(template: str) -> Optional[Callable[..., str]]:
    """The template's render function, with the conventions of Hugging Face chat templates; None
    without jinja2, or for a template it cannot compile (llama.cpp's engine is used then)."""
    try:
        import jinja2
        import jinja2.sandbox
    except ImportError:
        return None

    def raise_exception(message: str) -> str:
        raise PromptError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: Optional[int] = None, **kwargs: Any) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kwargs)

    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return environment.from_string(template).render
    except jinja2.TemplateError:
        return None


def _checked_builtin(model: Model, name: str) -> str:
    """A chat_format that llama.cpp knows as a built-in template, checked by formatting one message."""
    try:
        model.apply_chat_template([{"role": "user", "content": "x"}], template=name)
    except PromptError:
        hint = _LLAMA_CPP_PYTHON_FORMATS.get(name)
        also = f" (llama.cpp's nearest is {hint!r}, which may format differently)" if hint else ""
        raise ArgumentError(
            f"chat_format {name!r} is not one of llama.cpp's built-in chat templates{also}; "
            "use None for the GGUF's own template"
        ) from None
    return name


def _checked_messages(messages: Sequence[Message]) -> List[Message]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise PromptError("messages must be a list of dicts with 'role' and 'content'")
    if not messages:
        raise PromptError("no messages given")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise PromptError("each message must be a dict with a str 'role' and a 'content'")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise PromptError(f"a message's content must be a str or None, not {type(content).__name__}")
    return list(messages)


def _encoded(text: str) -> bytes:
    """text as UTF-8; lone surrogates pass through as invalid bytes, which tokenize() refuses by name."""
    return text.encode("utf-8", errors="surrogatepass")


def _token_text(model: Model, token: int) -> str:
    if token < 0:
        return ""
    return model.token_to_bytes(token, special=True).decode("utf-8", errors="replace")


# -- response dicts (the shapes of llama-cpp-python 0.3.36) ------------------------------------------


def _usage(request: _Request, run: _Run) -> Dict[str, int]:
    n_prompt = len(request.ids)
    return {
        "prompt_tokens": n_prompt,
        "completion_tokens": run.n_completion,
        "total_tokens": n_prompt + run.n_completion,
    }


def _completion(request: _Request, run: _Run, text: str) -> Completion:
    return {
        "id": request.id,
        "object": "text_completion",
        "created": request.created,
        "model": request.model_name,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": run.finish_reason}],
        "usage": _usage(request, run),
    }


def _completion_chunk(request: _Request, text: str, finish_reason: Optional[str]) -> CompletionChunk:
    return {
        "id": request.id,
        "object": "text_completion",
        "created": request.created,
        "model": request.model_name,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
    }


def _chat_completion(request: _Request, run: _Run, text: str) -> ChatCompletion:
    return {
        "id": "chat" + request.id,
        "object": "chat.completion",
        "created": request.created,
        "model": request.model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": run.finish_reason,
            }
        ],
        "usage": _usage(request, run),
    }


def _chat_chunk(request: _Request, delta: Dict[str, str], finish_reason: Optional[str]) -> ChatCompletionChunk:
    return {
        "id": "chat" + request.id,
        "model": request.model_name,
        "created": request.created,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


# -- stop strings ----------------------------------------------------------------------------------


def _checked_stops(stop: Union[str, Sequence[str], None]) -> List[str]:
    if stop is None:
        return []
    stops: List[Any] = [stop] if isinstance(stop, str) else list(stop) if isinstance(stop, (list, tuple)) else [None]
    if not all(isinstance(s, str) for s in stops):
        raise ArgumentTypeError(f"stop must be a str, a list of str, or None, not {stop!r}")
    if not all(stops):
        raise ArgumentError("stop strings must not be empty")
    return stops


# -- argument checks ---------------------------------------------------------------------------------


def _check_options(options: Dict[str, Any]) -> None:
    """llama-cpp-python's other constructor keywords: ignored, or refused unless at their default."""
    for name, value in options.items():
        if name in _IGNORED_OPTIONS:
            continue
        if name not in _DEFAULT_ONLY_OPTIONS:
            raise ArgumentTypeError(f"Llama() got an unexpected keyword argument {name!r}")
        default = _DEFAULT_ONLY_OPTIONS[name]
        if name in ("type_k", "type_v") and _is_default(value, _F16):
            continue
        if not _is_default(value, default):
            raise ArgumentError(f"pykvd.Llama cannot honour {name}={value!r}: only {default!r} is supported")


def _check_unsupported(defaults: Dict[str, Any], **given: Any) -> None:
    for name, value in given.items():
        if not _is_default(value, defaults[name]):
            raise ArgumentError(f"pykvd.Llama does not support {name}={value!r} (only {defaults[name]!r})")


def _is_default(value: Any, default: Any) -> bool:
    if default is None:
        return value is None
    if isinstance(default, bool):
        return value is default
    return is_plain_number(value) and value == default


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not _is_int(value) or not low <= value <= high:
        raise ArgumentError(f"{name} must be an integer in [{low}, {high}], not {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False, not {value!r}")


def _checked_seed(seed: Any) -> Optional[int]:
    """A fixed seed, or None for a fresh one per completion (llama.cpp's -1 / 0xFFFFFFFF)."""
    if not _is_int(seed) or not -1 <= seed <= LLAMA_DEFAULT_SEED:
        raise SamplingError(f"seed must be an integer in [-1, {LLAMA_DEFAULT_SEED}], not {seed!r}")
    return None if seed in (-1, LLAMA_DEFAULT_SEED) else seed
