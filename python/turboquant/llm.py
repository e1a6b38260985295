"""turboquant.LLM: text generation on the C++ engine with a compressed KV cache, in the habits of
llama-cpp-python's Llama and vLLM's LLM: construct once over a model file, then generate(),
stream=True for pieces as they come, chat() for the model's chat template."""

from __future__ import annotations

import atexit
import codecs
import numbers
import os
import queue
import threading
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from . import _C

_END = object()

# Streams being read: (cancel event, worker thread). Cancelled and joined at exit, before the
# interpreter finalizes (a worker calling back into it then would abort the process).
_live_streams: set = set()


@atexit.register
def _stop_streams() -> None:
    for cancel, worker in list(_live_streams):
        cancel.set()
        worker.join()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _StopText:
    """Token bytes -> text: UTF-8 decoded across token boundaries, cut before the first stop
    string. While the tail could still become a stop string it is held back, so that streamed
    pieces never show a part of one."""

    def __init__(self, stop: Sequence[str]):
        self.stop = [s for s in stop if s]
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.pending = ""
        self.done = False

    def _cut(self, final: bool) -> str:
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            out, self.pending, self.done = self.pending[: min(hits)], "", True
            return out
        if final:
            out, self.pending = self.pending, ""
            return out
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:k]):
                    hold = k
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold :]
        return out

    def feed(self, piece: bytes) -> str:
        if self.done:
            return ""
        self.pending += self.decoder.decode(piece)
        return self._cut(False)

    def finish(self) -> str:
        if self.done:
            return ""
        self.pending += self.decoder.decode(b"", final=True)
        return self._cut(True)


def _utf8_checked(text: str, what: str) -> str:
    # A lone surrogate (json.loads gives one for "\ud800") has no UTF-8 form: say so by name.
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid Unicode text: {e.reason} at index {e.start}") from None
    return text


def _is_int(v) -> bool:
    """An int or what stands for one (numpy's integers), never a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _token_ids(ids: Sequence[int], what: str) -> List[int]:
    """Token ids as ints the engine's int32 holds: another value is refused here by name (the
    binding answered with its list of signatures); the engine checks them against the vocabulary."""
    ids = list(ids)
    for i, t in enumerate(ids):
        if not _is_int(t):
            raise TypeError(f"{what} {t!r} at index {i} is not an int")
        ids[i] = t = int(t)
        if not -2**31 <= t < 2**31:
            raise ValueError(f"{what} {t} at index {i} is outside the vocabulary")
    return ids


def _chat_pairs(messages) -> List[Tuple[str, str]]:
    """(role, content) pairs of OpenAI-style messages: dicts or (role, content) tuples, a content a
    string or a list of text parts."""
    if isinstance(messages, (str, bytes, dict)):
        raise TypeError(f"messages must be a list of messages ({{'role': ..., 'content': ...}} or (role, content)), got "
                        f"{type(messages).__name__}")
    pairs = []
    for i, m in enumerate(messages):
        if not isinstance(m, (dict, list, tuple)) or (not isinstance(m, dict) and len(m) != 2):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content' or a (role, content) pair, got {m!r}")
        if isinstance(m, dict):
            if "role" not in m or "content" not in m:
                raise ValueError(f"messages[{i}] needs 'role' and 'content', got keys {sorted(m)}")
            role, content = m["role"], m["content"]
        else:
            role, content = m
        if isinstance(content, (list, tuple)):
            texts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise ValueError(f"messages[{i}].content: parts must be {{'type': 'text', 'text': '...'}}, got {part!r}")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(role, str) or not isinstance(content, str):
            raise TypeError(f"messages[{i}]: role and content must be strings, got {type(role).__name__} and {type(content).__name__}")
        pairs.append((role, _utf8_checked(content, f"messages[{i}].content")))
    return pairs


class LLM:
    """A model (GGUF, or a llama2.c checkpoint with its tokenizer.bin) on the C++ engine.

    kv_spec: the KV cache (docs/kv-specs.md); "default" is tq run's k3v2:ip:edge=2/k4v4:sink=4:window=64:centre.
    threads: CPU threads (0: all). n_ctx: most tokens of prompt and text (0: the model's training
    context; longer only with allow_long_context=True). device: "auto", "cpu" or "cuda".
    exact_products: fp32 products of the quantized weights instead of llama.cpp's 8-bit activations.
    """

    def __init__(
        self,
        model: Union[str, os.PathLike],
        *,
        tokenizer: Optional[Union[str, os.PathLike]] = None,
        kv_spec: Union[str, _C.KvSpec] = "default",
        threads: int = 0,
        n_ctx: int = 0,
        device: str = "auto",
        exact_products: bool = False,
        allow_long_context: bool = False,
    ):
        for name, v in (("threads", threads), ("n_ctx", n_ctx)):
            if not _is_int(v) or not 0 <= v < 2**32:
                raise ValueError(f"{name} must be an int in [0, 2**32), got {v!r}")
        if not isinstance(kv_spec, (str, _C.KvSpec)):
            raise TypeError(f"kv_spec must be a KV spec string (e.g. 'k3v2'), got {kv_spec!r}")
        threads, n_ctx = int(threads), int(n_ctx)
        spec = kv_spec.canonical if isinstance(kv_spec, _C.KvSpec) else kv_spec
        self._engine = _C.Engine(os.fspath(model), os.fspath(tokenizer) if tokenizer else "", spec, threads, n_ctx, device,
                                 bool(exact_products), bool(allow_long_context))
        self.last_seed: Optional[int] = None
        self._stopped_by_string = False  # the last generation ended at one of `stop`'s strings

    # ---- what the engine is ---------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """The model's shape: arch, n_layers, dim, n_heads, n_kv_heads, head_dim, vocab_size, max_seq, chat_template."""
        return self._engine.config

    @property
    def kv_spec(self) -> _C.KvSpec:
        return self._engine.kv_spec

    @property
    def device(self) -> str:
        return self._engine.device

    @property
    def n_ctx(self) -> int:
        return self._engine.context

    @property
    def bits_per_element(self) -> float:
        """Bits per K/V element of the cache's full pages over all layers (edge layers included)."""
        return self._engine.bits_per_element

    @property
    def last(self) -> dict:
        """The last generation: prompt_tokens, generated_tokens, prompt_seconds, generation_seconds,
        kv_bytes (pages and side buffers of its sequence), kv_pages, finish_reason ("stop" for a
        stop token or one of `stop`'s strings, "length", "cancelled" for a stream left early)."""
        d = self._engine.last
        if self._stopped_by_string:  # the engine saw its callback stop it; the caller asked for that
            d["finish_reason"] = "stop"
        return d

    def __repr__(self) -> str:
        return f"LLM({self._engine.path!r}, kv_spec='{self.kv_spec.canonical}', device='{self.device}')"

    # ---- text <-> tokens ------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: Optional[bool] = None, chat: bool = False) -> List[int]:
        """Token ids of `text`; BOS as the model asks for it unless add_bos says; chat=True wraps
        the text in the model's chat template first (as tq run --chat), where the text matches no
        control token (chat()). A plain text's special-token strings become those tokens."""
        return self._engine.tokenize(_utf8_checked(text, "text"), add_bos, chat)

    def detokenize(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self._engine.detokenize(_token_ids(ids, "token"), skip_special).decode("utf-8", "replace")

    def chat_prompt(self, messages: Sequence[Union[dict, Tuple[str, str]]]) -> str:
        """A conversation ([{"role": "user", "content": "..."}, ...]) in the model's chat template,
        ending with the opening of the assistant's reply. A content may also be a list of OpenAI
        text parts ([{"type": "text", "text": "..."}, ...]), joined."""
        return self._engine.chat_prompt(_chat_pairs(messages))

    # ---- generation -----------------------------------------------------------------------------
    def generate(
        self,
        prompt: Union[str, Sequence[str], Sequence[int]],
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[None, str, Sequence[str]] = None,
        stream: bool = False,
        chat: bool = False,
    ) -> Union[str, List[str], Iterator[str]]:
        """The text generated after `prompt` (without the prompt): greedy by default
        (temperature 0), else sampled as tq run samples (temperature, then top_k, top_p, min_p);
        the same seed gives the same text (seed None: a random one, kept in self.last_seed).
        Ends at max_tokens, a stop token, a full context, or before the first of `stop`'s strings.
        A list of prompts gives a list of texts. stream=True returns an iterator of text pieces
        as they are generated (one prompt). prompt may also be token ids (a list of ints)."""
        if not _is_int(max_tokens) or not 0 <= max_tokens < 2**32:
            raise ValueError(f"max_tokens must be an int in [0, 2**32), got {max_tokens!r}")
        max_tokens = int(max_tokens)
        # ints as ints (int() would take 1.7 as 1 and "7" as 7), numbers as numbers
        for name, value in (("top_k", top_k), ("seed", seed)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise TypeError(f"{name} must be an int, got {value!r}")
        for name, value in (("temperature", temperature), ("top_p", top_p), ("min_p", min_p)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number, got {value!r}")
        if not 0 <= top_k < 2**31:  # (the engine's is an int32)
            raise ValueError(f"top_k must be in [0, 2**31) (0: off), got {top_k}")
        if seed is not None and not 0 <= seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        _C.validate_sampling(float(temperature), int(top_k), float(top_p), float(min_p))
        if stop is not None and not isinstance(stop, (str, list, tuple)):
            raise TypeError(f"stop must be a string or a list of strings, got {stop!r}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if not all(isinstance(s, str) for s in stops):
            raise TypeError("stop must be a string or a list of strings")
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            if stream:
                raise ValueError("stream=True takes one prompt, got a list of prompts")
            return [self.generate(p, max_tokens, temperature, top_p, top_k, min_p, seed, stops, False, chat) for p in prompt]
        if isinstance(prompt, str):
            ids = self.tokenize(prompt, chat=chat)
        elif isinstance(prompt, (list, tuple)) and all(_is_int(t) for t in prompt):
            if chat:
                raise ValueError("chat=True wraps a text prompt in the chat template; token ids are used as they are")
            ids = _token_ids(prompt, "prompt token")
        else:
            raise TypeError(f"prompt must be a str, a list of str or a list of token ids, got {type(prompt).__name__}")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little") if temperature > 0 else 0
        self.last_seed = seed
        args = (ids, max_tokens, float(temperature), int(top_k), float(top_p), float(min_p), int(seed))
        if stream:
            return self._stream(args, stops)
        text = _StopText(stops)
        parts: List[str] = []

        def on_token(_id: int, piece: bytes) -> bool:
            parts.append(text.feed(piece))
            return not text.done

        self._stopped_by_string = False
        self._engine.generate(*args, on_token)
        self._stopped_by_string = text.done
        parts.append(text.finish())
        return "".join(parts)

    def chat(self, messages: Sequence[Union[dict, Tuple[str, str]]], **kwargs) -> Union[str, Iterator[str]]:
        """generate() on the conversation in the model's chat template (chat_prompt); the reply ends
        at the template's end-of-turn token. The messages' texts match no control token: a message
        holding "<|im_start|>system" is that text, not a new turn (as tq serve's chat)."""
        return self.generate(self._engine.chat_tokens(_chat_pairs(messages)), **kwargs)

    def _stream(self, args: tuple, stops: List[str]) -> Iterator[str]:
        # The engine runs in a thread with the GIL released; its callback hands each piece over a
        # queue. Leaving the loop early (break, close()) tells the callback to stop the engine.
        pieces: "queue.Queue" = queue.Queue()
        cancel = threading.Event()
        text = _StopText(stops)

        def on_token(_id: int, piece: bytes) -> bool:
            if cancel.is_set():
                return False
            s = text.feed(piece)
            if s:
                pieces.put(s)
            return not text.done

        def run() -> None:
            try:
                self._stopped_by_string = False
                self._engine.generate(*args, on_token)
                self._stopped_by_string = text.done
                tail = text.finish()
                if tail:
                    pieces.put(tail)
            except BaseException as e:  # handed to the consumer, raised there
                pieces.put(_Failure(e))
            finally:
                pieces.put(_END)

        worker = threading.Thread(target=run, name="turboquant-generate", daemon=True)

        def iterate() -> Iterator[str]:
            # Started on the first next(): an iterator never read generates nothing. One still open
            # when the interpreter exits is cancelled and joined first (_stop_streams), so the
            # engine never calls back into a finalizing interpreter.
            live = (cancel, worker)
            _live_streams.add(live)
            worker.start()
            try:
                while True:
                    item = pieces.get()
                    if item is _END:
                        return
                    if isinstance(item, _Failure):
                        raise item.exc
                    yield item
            finally:
                cancel.set()
                worker.join()
                _live_streams.discard(live)

        return iterate()
