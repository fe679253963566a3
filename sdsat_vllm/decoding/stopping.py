"""Commit tokens one at a time and stop exactly where plain decoding would.

A speculative step may produce several tokens at once; EOS, a stop string or max_new_tokens can
fall anywhere inside them. `StopChecker.commit` takes them in order and stops at the first token
after which plain (one token per forward) decoding would have stopped, so every mode, `ar`
included, ends at the same token with the same text.

Stop strings are looked for in the text streamed so far (tokenizers' DecodeStream, as vLLM's
incremental detokenizer does), only where the newest chunk could complete one, so a call costs
O(new text) instead of decoding the whole output after every token.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from tokenizers.decoders import DecodeStream

FINISH_EOS = "eos"
FINISH_STOP = "stop"
FINISH_LENGTH = "length"


class StopChecker:
    """EOS ids, stop strings and the token budget of one generate call.

    Token ids keep the EOS or the token that completed a stop string (as transformers and vLLM
    do); the text excludes the stop string and everything after it.
    """

    def __init__(self, tokenizer, eos_token_ids: Iterable[int], max_new_tokens: int,
                 stop: Sequence[str] = (), ignore_eos: bool = False):
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset() if ignore_eos else frozenset(int(i) for i in eos_token_ids)
        self.max_new_tokens = max_new_tokens
        self.stop = [s for s in stop if s]
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self.stop_text_index: int | None = None  # where the stop string starts in the text
        self._backend = getattr(tokenizer, "backend_tokenizer", None)  # fast tokenizers only
        # A stream holds back an incomplete UTF-8 character that a full decode shows as U+FFFD, so a
        # stop string containing U+FFFD is matched on full decodes.
        streamable = self._backend is not None and not any("\ufffd" in s for s in self.stop)
        self._stream = DecodeStream(skip_special_tokens=True) if self.stop and streamable else None
        # a stop string completed by the next chunk starts at most len(stop) - 1 characters before
        # it, so only that much of the streamed text is kept
        self._tail_len = max(map(len, self.stop), default=1) - 1
        self._tail = ""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def commit(self, tokens: Sequence[int]) -> list[int]:
        """Append `tokens` in order until one ends generation; returns the tokens taken."""
        taken = []
        for tok in tokens:
            if self.finished:
                break
            self.generated.append(int(tok))
            taken.append(int(tok))
            if int(tok) in self.eos_token_ids:
                self.finish_reason = FINISH_EOS
            elif self.stop and self._find_stop() is not None:
                self.finish_reason = FINISH_STOP
            elif len(self.generated) >= self.max_new_tokens:
                self.finish_reason = FINISH_LENGTH
        return taken

    def _find_stop(self) -> int | None:
        if self._stream is not None:
            chunk = self._stream.step(self._backend, self.generated[-1])
            if not chunk:  # an incomplete UTF-8 character: no new text yet
                return None
            window = self._tail + chunk
            self._tail = window[-self._tail_len:] if self._tail_len else ""
            if not any(s in window for s in self.stop):
                return None
        text = self.decode()  # once per hit: the index is taken in the text the caller gets
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stop_text_index = min(hits)
            return self.stop_text_index
        return None

    def decode(self) -> str:
        return self.tokenizer.decode(self.generated, skip_special_tokens=True)

    def text(self) -> str:
        """The generated text, cut before the stop string if one ended generation."""
        text = self.decode()
        return text[: self.stop_text_index] if self.finish_reason == FINISH_STOP else text
