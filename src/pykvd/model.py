"""Loading a GGUF model: validation, metadata, tokenizer and chat template."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np

from . import models as _models
from ._llama import native
from .draft_head import HeadWeights
from .errors import ArgumentError, ArgumentTypeError, PromptError, SessionClosedError
from .gguf_file import GGUFHeader, read_header
from .model_checks import check_header
from .probe import LoadParams, ensure_loadable, probe_enabled
from .profile import RuntimeProfile

Message = dict  # {"role": ..., "content": ...}

_Self = TypeVar("_Self", bound="LoadedModel")

KV_PROBE_CELLS = 256  # llama.cpp pads a context to 256 cells, so this size is allocated exactly


@dataclass(frozen=True)
class LayerInfo:
    index: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_embd_k_gqa: int
    n_embd_v_gqa: int
    is_swa: bool
    has_kv: bool


@dataclass(frozen=True)
class ModelInfo:
    """What llama.cpp loaded: the dimensions that decide what inference state costs."""

    path: Path
    architecture: str
    name: str
    description: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    n_ctx_train: int
    n_swa: int
    recurrent: bool  # some layers carry recurrent state (mamba, rwkv, hybrids): tokens cannot be evicted
    n_params: int
    size_bytes: int
    layers: tuple[LayerInfo, ...]

    @property
    def head_dim_k(self) -> int:
        return self.layers[0].head_dim_k

    @property
    def head_dim_v(self) -> int:
        return self.layers[0].head_dim_v

    @property
    def swa_layers(self) -> tuple[int, ...]:
        return tuple(layer.index for layer in self.layers if layer.is_swa)


def _matrix_types(header: GGUFHeader) -> dict[int, int]:
    """Elements of the file's matrices, by ggml type."""
    elements: dict[int, int] = {}
    for tensor in header.tensors:
        if len(tensor.shape) >= 2:
            elements[tensor.ggml_type] = elements.get(tensor.ggml_type, 0) + tensor.n_elements
    return elements


class LoadedModel:
    """A GGUF model loaded by llama.cpp: weights, tokenizer, chat template and dimensions.
    (pykvd.Model is this plus ``session()``.)

    ``model`` is a path to a GGUF file or the name of a fetchable model
    ("smollm2", "gemma3"). ``exact=True`` (default) loads the weights for the
    bit-exact profile, repacked only where single rows lose nothing by it
    (``RuntimeProfile.for_weights``); ``exact=False`` lets llama.cpp repack
    them for speed. ``chat_template`` replaces the GGUF's own template
    (a Jinja-style template or a llama.cpp built-in name such as "gemma" or
    "chatml"); it is needed for GGUFs that carry none. ``probe`` (default:
    on unless $PYKVD_PROBE is 0) first loads and runs an unknown file in a
    child process, so a file that would crash or hang llama.cpp is refused
    with InvalidModelError instead; pass probe=False for trusted files. Use as
    a context manager, or call close().
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        exact: bool = True,
        n_gpu_layers: int = 0,
        use_mmap: bool = True,
        chat_template: str | None = None,
        progress=None,
        probe: bool | None = None,
    ):
        if chat_template is not None:
            _utf8(_text(chat_template, "chat_template", ArgumentTypeError), "chat_template", ArgumentError)
        _check_load_flags(n_gpu_layers, exact, use_mmap, probe)
        self.path = _models.resolve(model, progress=progress)
        header = read_header(self.path)
        check_header(header)
        self.profile = RuntimeProfile.for_weights(exact, _matrix_types(header))
        self._chat_template = chat_template
        if probe if probe is not None else probe_enabled():
            params = LoadParams(
                n_gpu_layers=n_gpu_layers,
                use_mmap=use_mmap,
                use_extra_bufts=self.profile.extra_bufts,
                flash_attn=self.profile.flash_attn,
                batch_invariant=self.profile.batch_invariant,
            )
            ensure_loadable(self.path, header.data_offset, params)
        self._native = native.Model(
            str(self.path), n_gpu_layers=n_gpu_layers, use_mmap=use_mmap, use_extra_bufts=self.profile.extra_bufts
        )
        self.info = self._read_info(header.architecture, header.metadata.get("general.name", ""))
        self.head_weights = HeadWeights.of(header)  # for a draft that scores a few candidates itself
        self._kv_bytes_per_cell: float | None = None

    def _read_info(self, arch: str, name: object) -> ModelInfo:
        m = self._native
        layers = tuple(LayerInfo(index=i, **m.layer_info(i)) for i in range(m.n_layer))
        return ModelInfo(
            path=self.path,
            architecture=arch,
            name=str(name),
            description=m.description,
            n_layer=m.n_layer,
            n_embd=m.n_embd,
            n_head=m.n_head,
            n_head_kv=m.n_head_kv,
            n_vocab=m.n_vocab,
            n_ctx_train=m.n_ctx_train,
            n_swa=m.n_swa,
            recurrent=m.is_recurrent,
            n_params=m.n_params,
            size_bytes=m.size,
            layers=layers,
        )

    # -- lifetime ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._native.closed

    def close(self) -> None:
        """Release this handle on the weights; sessions still open keep them alive until they close."""
        self._native.close()

    def _share(self) -> LoadedModel:
        """A private view of this model for a session: it keeps the weights usable until it is closed."""
        view = copy.copy(self)
        view._native = self._handle().share()  # its own reference to the same weights
        return view

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _handle(self):
        if self.closed:
            raise SessionClosedError("model is closed")
        return self._native

    # -- tokenizer ---------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> np.ndarray:
        """Token ids (int32) of text; add_special adds BOS where the model wants it."""
        text = _utf8(_text(text, "text", PromptError), "text", PromptError)
        return self._handle().tokenize(text, bool(add_special), bool(parse_special))

    def detokenize(self, tokens: Sequence[int] | np.ndarray, *, special: bool = False) -> str:
        ids = self.check_tokens(tokens)
        raw = self._handle().detokenize(ids, False, bool(special))
        return raw.decode("utf-8", errors="replace")

    def token_to_bytes(self, token: int, *, special: bool = False) -> bytes:
        return self._handle().token_to_piece(self._checked_token(token), bool(special))

    def check_tokens(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """tokens as a 1-D int32 array, or PromptError if any id is outside the vocabulary."""
        ids = np.asarray(tokens)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise PromptError("tokens must be a 1-D sequence of integer ids")
        if ids.size and (ids.min() < 0 or ids.max() >= self.info.n_vocab):
            raise PromptError(f"token ids must be in [0, {self.info.n_vocab})")
        return ids.astype(np.int32, copy=False)

    def is_end_of_generation(self, token: int) -> bool:
        return self._handle().is_eog(self._checked_token(token))

    def _checked_token(self, token) -> int:
        """One token id inside the vocabulary (numpy integers too), else PromptError."""
        if not isinstance(token, (int, np.integer)) or isinstance(token, bool) or not 0 <= token < self.info.n_vocab:
            raise PromptError(f"a token id must be an integer in [0, {self.info.n_vocab}), not {token!r}")
        return int(token)

    @property
    def add_bos(self) -> bool:
        return self._handle().add_bos

    # -- chat template -----------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        """The template chat uses: the one given to the constructor, else the GGUF's (None if it has none)."""
        return self._chat_template or self._handle().chat_template()

    def apply_chat_template(
        self, messages: Sequence[Message], *, add_generation_prompt: bool = True, template: str | None = None
    ) -> str:
        """The conversation formatted with the model's own template (or ``template``)."""
        pairs = []
        for message in messages:
            if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
                raise PromptError("each message must be a dict with 'role' and 'content'")
            pairs.append(
                tuple(_utf8(str(message[key]), f"a message's {key}", PromptError) for key in ("role", "content"))
            )
        if template is not None:
            _utf8(_text(template, "template", ArgumentTypeError), "template", ArgumentError)
        template = template or self._chat_template
        if template is None and self._handle().chat_template() is None:
            raise PromptError(
                f"{self.path.name} has no chat template: pass chat_template= "
                "(a llama.cpp built-in name such as 'gemma' or 'chatml', or a template)"
            )
        try:
            return self._handle().apply_chat_template(template, pairs, add_generation_prompt)
        except ValueError as exc:
            raise PromptError(str(exc)) from None

    # -- what state costs ----------------------------------------------------

    @property
    def key(self) -> tuple:
        """What residuals and measurements must agree on: the same weights file and geometry."""
        path = os.path.realpath(self.path)
        return path, os.path.getsize(path), self.info.n_layer, self.info.n_embd

    def kv_buffer_bytes(self, n_ctx: int, *, swa_full: bool = True) -> int:
        """Bytes of the KV buffer llama.cpp allocates for a context of n_ctx cells, read from its allocator."""
        n_batch = min(512, n_ctx)
        ctx = native.Context(
            self._handle(),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_threads=1,
            n_threads_batch=1,
            flash_attn=self.profile.flash_attn,
            swa_full=swa_full,
            batch_invariant=self.profile.batch_invariant,
        )
        try:
            return int(ctx.memory()["kv"])
        finally:
            ctx.close()

    @property
    def kv_bytes_per_cell(self) -> float:
        """KV buffer bytes one cell costs, measured once per model from a context of KV_PROBE_CELLS cells."""
        if self._kv_bytes_per_cell is None:
            self._kv_bytes_per_cell = self.kv_buffer_bytes(KV_PROBE_CELLS) / KV_PROBE_CELLS
        return self._kv_bytes_per_cell

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.info.description
        return f"Model({str(self.path)!r}, {state})"


def _text(value, what: str, error: type[Exception]) -> str:
    if not isinstance(value, str):
        raise error(f"{what} must be str, not {type(value).__name__}")
    return value


def _utf8(text: str, what: str, error: type[Exception]) -> str:
    """text, if llama.cpp can take it as UTF-8 (lone surrogates, as from undecodable bytes, cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{what} is not valid UTF-8 text: {exc.reason} at index {exc.start}") from None
    return text


def _check_load_flags(n_gpu_layers, exact, use_mmap, probe) -> None:
    """The loader's own arguments, checked before any file is touched (llama.cpp takes an int32 layer count)."""
    if not isinstance(n_gpu_layers, int) or isinstance(n_gpu_layers, bool) or not -1 <= n_gpu_layers < 2**31:
        raise ArgumentError(f"n_gpu_layers must be an integer in [-1, 2**31), not {n_gpu_layers!r}")
    for name, value in (("exact", exact), ("use_mmap", use_mmap)):
        if not isinstance(value, bool):
            raise ArgumentTypeError(f"{name} must be True or False, not {value!r}")
    if probe is not None and not isinstance(probe, bool):
        raise ArgumentTypeError(f"probe must be True, False or None, not {probe!r}")
