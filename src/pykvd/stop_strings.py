"""Stop strings over streamed text: text is let out only once no stop string can begin in it."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence


class StopStrings:
    """Feed pieces of generated text; get back what may be sent. Text that could be the start of a
    stop string is held until the next piece decides; when a stop string appears, the text before it
    is the last to go out and ``stopped`` turns True."""

    def __init__(self, stops: Sequence[str]):
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if not self._stops:
            return piece
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held, self.stopped = "", True
            return text[:cut]
        keep = self._longest_open_prefix(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def cut(self, pieces: Iterable[str], cancelled: Callable[[], bool] = lambda: False) -> Iterator[str]:
        """The text of pieces as it may go out, ending before the first stop string (or once cancelled()).
        pieces is closed, if it can be, before the held tail goes out, so a session stream behind it takes
        calls again by the time the consumer sees the last text."""
        try:
            for piece in pieces:
                if cancelled():
                    return
                text = self.feed(piece)
                if text:
                    yield text
                if self.stopped:
                    return
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        tail = self.flush()
        if tail:
            yield tail

    def flush(self) -> str:
        """The held text, once generation has ended without a stop string."""
        held, self._held = self._held, ""
        return held

    def _longest_open_prefix(self, text: str) -> int:
        """The length of the longest end of text that begins some stop string (and is not all of it)."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
