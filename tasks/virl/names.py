"""Per-city name vocabularies: a city's own syllables make its city, street, landmark and place names, so two
cities share no names (the visual-OOD cities also differ in their words)."""

from __future__ import annotations

import numpy as np

_ONSETS = ("b", "br", "c", "ch", "d", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "tr",
           "v", "w", "z", "sh", "th", "fl", "cl", "pl", "qu")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "oo", "ou", "ie")
_CODAS = ("", "", "n", "r", "l", "s", "t", "m", "nd", "rk", "ll", "ck", "ng", "x")
STREET_KINDS = ("Street", "Avenue", "Road", "Lane", "Way", "Place")
DIAGONAL_KINDS = ("Boulevard", "Broadway", "Parkway")
BUSINESS_KINDS = ("Bakery", "Bank", "Pharmacy", "Cafe", "Hotel", "Library", "Museum", "Market", "Theater", "Gym",
                  "Bookstore", "Florist", "Diner", "Bistro", "Gallery", "Barber", "Deli", "Cinema", "Post Office",
                  "Tea House", "Pizzeria", "Bike Shop", "Toy Store", "Music Hall", "Laundromat", "Hardware")


class NameMaker:
    """Draws distinct capitalised pseudo-words from a per-city syllable inventory."""

    def __init__(self, rng: np.random.Generator):
        self._rng = rng
        self._onsets = tuple(rng.choice(_ONSETS, size=12, replace=False))
        self._codas = tuple(rng.choice(_CODAS, size=7, replace=False))
        self._used: set[str] = set()

    def word(self, syllables: tuple[int, int] = (2, 3)) -> str:
        for _ in range(1000):
            n = int(self._rng.integers(syllables[0], syllables[1] + 1))
            parts = [str(self._rng.choice(self._onsets)) + str(self._rng.choice(_VOWELS)) for _ in range(n)]
            text = ("".join(parts) + str(self._rng.choice(self._codas))).capitalize()
            if text not in self._used and 4 <= len(text) <= 11:
                self._used.add(text)
                return text
        raise RuntimeError("the name vocabulary is exhausted; use fewer names per city.")

    def street(self, kinds: tuple[str, ...] = STREET_KINDS) -> str:
        return f"{self.word((1, 2))} {self._rng.choice(kinds)}"

    def business(self) -> str:
        return f"{self.word((1, 2))} {self._rng.choice(BUSINESS_KINDS)}"
