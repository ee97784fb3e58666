"""The chat page (issue 5) in a real browser (Debian's chromium, driven by Playwright) against a real
`genloop serve` of a tiny random model: chat, streaming, stop, regenerate, feedback, corrections,
reopening a stored conversation, API keys, and model text that must never become HTML."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import playwright.sync_api as sync_api
import pytest

expect = sync_api.expect

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    *("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
]
SERVE_ARGS = ("--name", "tiny", "--dtype", "float32", "--max-seq-len", "4096")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'

expect.set_options(timeout=30_000)  # a tiny model, but 2 CPU cores shared with chromium
# True once the streaming answer's meta line ("writing… · N tokens") counts at least `arg` tokens.
TOKENS_SHOWN = """n => {
    const meta = document.querySelector('[data-status="streaming"] [data-testid="message-meta"]');
    const m = meta && meta.textContent.match(/writing… · (\\d+) tokens/);
    return m !== null && Number(m[1]) >= n;
}"""


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, live_server: Any) -> Iterator[str]:
    with live_server(tiny_model_dir, *SERVE_ARGS) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            "chromium is not installed at /usr/bin/chromium: run `make browser` (apt-get install chromium)"
        )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser: Any, base: str) -> tuple[Any, list[str]]:
    """A fresh browser context on the page, and the list its uncaught script errors go to."""
    context = browser.new_context(base_url=base, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto("/")
    return page, errors


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[tuple[Any, list[str]]]:
    page, errors = open_page(browser, server)
    expect(page.get_by_test_id("model-name")).to_have_text("tiny")
    yield page, errors
    page.context.close()


def sampling(page: Any, temperature: float, max_tokens: int) -> None:
    page.get_by_test_id("temperature").fill(str(temperature))
    page.get_by_test_id("max-tokens").fill(str(max_tokens))


def send(page: Any, text: str) -> None:
    box = page.get_by_test_id("composer-input")
    box.fill(text)
    box.press("Enter")


def answers(page: Any) -> Any:
    return page.locator('[data-testid="message"][data-role="assistant"]')


def stored(base: str, conversation_id: str) -> dict[str, Any]:
    r = httpx.get(f"{base}/v1/conversations/{conversation_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def conversation_id(page: Any) -> str:
    cid = page.url.partition("#")[2]
    assert cid, page.url
    return cid


def test_chat_stop_regenerate_feedback_correct_and_reopen(page: tuple[Any, list[str]], server: str) -> None:
    page, errors = page
    page.locator('[data-testid="system-details"] summary').click()
    page.get_by_test_id("system-prompt").fill("You are terse.")

    # Shift+Enter is a newline, Enter sends. At temperature 0 this model repeats a newline and never
    # ends (the prompt is fixed, so greedy decoding is too): watch the tokens arrive, then stop.
    sampling(page, 0, 4000)
    box = page.get_by_test_id("composer-input")
    box.fill("the cat sat")
    box.press("Shift+Enter")
    box.press_sequentially("on the mat")
    box.press("Enter")
    expect(box).to_have_value("")
    user = page.locator('[data-testid="message"][data-role="user"]').first
    expect(user.get_by_test_id("message-body")).to_have_text("the cat sat\non the mat", use_inner_text=True)
    first = answers(page).nth(0)
    expect(page.get_by_test_id("stop")).to_be_visible()
    # Checked every frame, not by expect's slower retries: the whole answer takes only a few seconds.
    page.wait_for_function(TOKENS_SHOWN, arg=20, polling="raf", timeout=60_000)
    page.get_by_test_id("stop").click()
    expect(first).to_have_attribute("data-status", "cancelled")
    expect(first.get_by_test_id("message-meta")).to_contain_text("stopped")
    expect(page.get_by_test_id("send")).to_be_visible()
    cid = conversation_id(page)
    stopped_id = first.get_attribute("data-id")
    deadline = time.monotonic() + 10
    while (m := _message(stored(server, cid), stopped_id))[
        "status"
    ] == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert m["status"] == "cancelled" and 0 < m["completion_tokens"] < 4000, m
    conv = stored(server, cid)
    assert [(m["role"], m["content"]) for m in conv["messages"][:2]] == [
        ("system", "You are terse."),
        ("user", "the cat sat\non the mat"),
    ]
    expect(page.get_by_test_id("system-prompt")).to_be_disabled()
    expect(page.locator(f'[data-testid="conversation-item"][data-id="{cid}"]')).to_be_visible()

    # Regenerate the stopped answer: a sibling, switchable with ‹ 1/2 ›, and preferred over the other.
    sampling(page, 1.0, 16)
    first.get_by_test_id("regenerate").click()
    expect(first).to_have_attribute("data-status", "complete", timeout=60_000)
    expect(first.get_by_test_id("sibling-count")).to_have_text("2/2")
    regen_id = first.get_attribute("data-id")
    assert regen_id != stopped_id
    first.get_by_test_id("sibling-prev").click()
    expect(first).to_have_attribute("data-id", stopped_id)
    expect(first.get_by_test_id("sibling-count")).to_have_text("1/2")
    first.get_by_test_id("sibling-next").click()
    expect(first).to_have_attribute("data-id", regen_id)
    first.get_by_test_id("prefer").click()
    expect(first.get_by_test_id("prefer")).to_have_attribute("aria-pressed", "true")

    # The next turn continues the shown path (after the regenerated answer) and streams in.
    send(page, "tell me more")
    second = answers(page).nth(1)
    expect(second).to_have_attribute("data-status", "complete", timeout=60_000)
    second_id = second.get_attribute("data-id")
    second_stored = _message(stored(server, cid), second_id)
    assert second_stored["status"] == "complete"
    expect(second.get_by_test_id("message-meta")).to_contain_text(
        f"{second_stored['completion_tokens']} tokens"
    )

    # Thumbs down with a comment (the small inline form), then a correction of the same answer.
    second.get_by_test_id("thumb-down").click()
    page.get_by_test_id("feedback-comment").fill("too random")
    page.get_by_test_id("feedback-comment").press("Enter")
    expect(second.get_by_test_id("thumb-down")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_test_id("feedback-form")).to_have_count(0)
    second.get_by_test_id("edit").click()
    page.get_by_test_id("correction-input").fill("The cat sat on the **mat**.")
    page.get_by_test_id("correction-save").click()
    expect(second.get_by_test_id("correction")).to_contain_text("The cat sat on the mat.")
    expect(second.get_by_test_id("correction").locator("strong")).to_have_text("mat")

    # A fresh load: the conversation is in the list; opening it shows the newest answers and feedback.
    page.goto("/")
    expect(answers(page)).to_have_count(0)
    item = page.locator(f'[data-testid="conversation-item"][data-id="{cid}"]')
    expect(item).to_have_text("the cat sat on the mat")
    item.click()
    expect(answers(page)).to_have_count(2)
    expect(answers(page).nth(0)).to_have_attribute("data-id", regen_id)
    expect(answers(page).nth(0).get_by_test_id("sibling-count")).to_have_text("2/2")
    expect(answers(page).nth(1).get_by_test_id("correction")).to_contain_text("The cat sat on the mat.")
    expect(answers(page).nth(1).get_by_test_id("thumb-down")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_test_id("system-prompt")).to_have_value("You are terse.")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat_page.png"), full_page=True)

    # The store has it all: the tree, the rating and comment, the correction, the preference.
    by_id = {m["id"]: m for m in stored(server, cid)["messages"]}
    assert by_id[regen_id]["parent_id"] == by_id[stopped_id]["parent_id"]
    assert by_id[stopped_id]["status"] == "cancelled"
    assert by_id[by_id[second_id]["parent_id"]]["parent_id"] == regen_id
    kinds = {(f["kind"], f["rating"], f["comment"], f["correction"]) for f in by_id[second_id]["feedback"]}
    assert kinds == {
        ("downvote", -1, "too random", None),
        ("correction", None, None, "The cat sat on the **mat**."),
    }
    assert [f["preferred_over"] for f in by_id[regen_id]["feedback"]] == [stopped_id]
    assert errors == []


def _message(conv: dict[str, Any], message_id: str) -> dict[str, Any]:
    return next(m for m in conv["messages"] if m["id"] == message_id)


MARKDOWN = (
    "**bold**, *it*, _it too_ and `x<y`\nsnake_case_name\n\n"
    "```py\nprint('<b>')\n```\n- one\n- two\n\n3. c\n4. d"
)
MARKDOWN_HTML = (
    '<div class="md"><p><strong>bold</strong>, <em>it</em>, <em>it too</em> and <code>x&lt;y</code><br>'
    "snake_case_name</p>"
    "<pre><code data-lang=\"py\">print('&lt;b&gt;')</code></pre>"
    '<ul><li>one</li><li>two</li></ul><ol start="3"><li>c</li><li>d</li></ol></div>'
)


def test_model_text_is_rendered_as_text_never_as_html(page: tuple[Any, list[str]], server: str) -> None:
    page, errors = page
    # window.genloopRender(text) -> HTMLElement is the renderer for every message on the page.
    assert page.evaluate("t => window.genloopRender(t).outerHTML", MARKDOWN) == MARKDOWN_HTML
    got = page.evaluate(
        """payload => {
            const node = window.genloopRender(payload);
            document.body.append(node);
            return {text: node.textContent, tags: [...node.querySelectorAll('*')].map(n => n.tagName)};
        }""",
        XSS,
    )
    assert got == {"text": XSS, "tags": ["P"]}

    # The same payload as a user message, stored, then shown again from the store after a reload.
    sampling(page, 1.0, 4)
    send(page, XSS)
    expect(answers(page).nth(0)).to_have_attribute("data-status", "complete", timeout=60_000)
    cid = conversation_id(page)
    page.goto("/")
    item = page.locator(f'[data-testid="conversation-item"][data-id="{cid}"]')
    expect(item).to_contain_text("<script>window.__xss=1</script><img")  # the title, cut to 60 characters
    item.click()
    body = page.locator('[data-role="user"] [data-testid="message-body"]')
    expect(body).to_have_text(XSS)
    page.wait_for_timeout(300)  # an injected <img onerror> would have fired by now
    assert page.locator("[data-testid=messages] script, [data-testid=messages] img").count() == 0
    assert page.evaluate("window.__xss") is None
    assert errors == []


def test_api_key_from_settings(browser: Any, tiny_model_dir: Path, live_server: Any) -> None:
    with live_server(tiny_model_dir, *SERVE_ARGS, "--api-key", "sekrit") as base:
        page, errors = open_page(browser, base)
        expect(page.get_by_test_id("error")).to_contain_text("API key")
        expect(page.get_by_test_id("settings")).to_have_attribute("open", "")
        page.get_by_test_id("api-key").fill("sekrit")
        page.get_by_test_id("api-key-save").click()
        expect(page.get_by_test_id("model-name")).to_have_text("tiny")
        expect(page.get_by_test_id("error")).to_be_hidden()
        sampling(page, 1.0, 4)
        send(page, "hello")
        expect(answers(page).nth(0)).to_have_attribute("data-status", "complete", timeout=60_000)
        # The key is kept in this browser: a reload needs no typing.
        page.reload()
        expect(page.get_by_test_id("model-name")).to_have_text("tiny")
        expect(page.get_by_test_id("conversation-item")).to_have_count(1)
        assert errors == []
        page.context.close()
