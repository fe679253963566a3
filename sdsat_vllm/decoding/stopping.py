"""Commit tokens one at a time and stop exactly where plain decoding would.

A speculative step may produce several tokens at once; EOS, a stop string or max_new_tokens can
fall anywhere inside them. `StopChecker.commit` takes them in order and stops at the first token
after which plain (one token per forward) decoding would have stopped, so every mode, `ar`
included, ends at the same token with the same text.
"""

from __future__ import annotations

from typing import Iterable, Sequence

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
        text = self.decode()
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
