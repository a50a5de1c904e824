"""Benchmark prompts: plain prose of any length, the same for every model and script."""

from __future__ import annotations

# Sentences, one per paragraph, joined until a prompt has the tokens it needs.
_TEXT = """
The harbour town woke before the sun, when the first bakers lit their ovens and the gulls began to argue over
the quay.

Fishermen checked their nets by lantern light, calling out the names of the boats that had not yet come home.

By seven the market square was full of carts: apples from the hill farms, cheese wrapped in cloth, and baskets
of eels still twitching.

The schoolmaster crossed the square at the same minute every morning, and the shopkeepers set their clocks by
his footsteps.

In the old customs house a clerk copied ledgers that nobody had read for forty years, because the rules said
they must be copied.

At noon the bell of the chapel rang twelve times, although the rope had frayed and the last stroke was always
a little late.

Children raced along the sea wall, daring each other to jump the gap where a storm had torn away three of the
great stones.

The lighthouse keeper slept through the afternoon, and his cat kept watch from the window above the rocks.

When the tide turned, the smell of salt and tar drifted up the narrow streets and into every open kitchen.

Evening brought the boats back one by one, low in the water, their crews too tired to sing the songs they had
started at dawn.

Someone always lit a fire on the beach, and the old people told the same stories they had told the year
before, changed only a little.

Late at night the wind came off the sea, rattled the shutters, and carried the sound of the buoy bell far
inland.
"""
_SENTENCES = tuple(" ".join(paragraph.split()) for paragraph in _TEXT.strip().split("\n\n"))


def build_prompt(model, n_tokens: int, start: int = 0) -> str:
    """Text of at least n_tokens tokens for this model, made of whole sentences, beginning with
    sentence ``start`` (different starts give different prompts)."""
    parts: list[str] = []
    i = start
    while True:
        parts.append(_SENTENCES[i % len(_SENTENCES)])
        i += 1
        text = " ".join(parts)
        if len(model.tokenize(text)) >= n_tokens:
            return text
