// genloop chat page: plain DOM, no build step, no dependencies.
//
// It speaks the OpenAI-compatible API plus genloop's store extensions: chat requests carry
// conversation_id / parent_id / regenerate, answers get feedback through /v1/feedback, and the sidebar
// lists /v1/conversations. A conversation is a tree (regenerated answers are siblings); the page shows
// one path through it and lets you switch between sibling answers.
//
// Model text is untrusted: `render` builds every node with DOM APIs and textContent, never innerHTML,
// so markup in an answer shows as literal text. It is exposed as `window.genloopRender(text)`
// (returns an HTMLElement) so tests can check exactly that.
"use strict";

(() => {
  const KEY_STORE = "genloop.apiKey";
  const SETTINGS_STORE = "genloop.settings";
  const $ = (id) => document.querySelector(`[data-testid="${id}"]`);

  /** A new element: props are attributes, except text (textContent), testid and on (event handlers). */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "testid") node.dataset.testid = value;
      else if (name === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else node.setAttribute(name, value === true ? "" : value);
    }
    node.append(...children);
    return node;
  }

  // ---- rendering model text: paragraphs, fenced code, lists, headings, bold/italic/inline code ----

  const FENCE = /^\s*(`{3,}|~{3,})\s*([\w+.#-]*)/;
  const LIST = /^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const HEADING = /^(#{1,6})\s+(.*)$/;
  // Underscore emphasis only at word edges (not inside or next to other underscores), so snake_case
  // names and window.__x stay as typed.
  const INLINE = new RegExp(
    [
      /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/.source, // 1,2: inline code
      /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 3: bold
      /(?<![\p{L}\p{N}_])__(?=\S)([\s\S]*?\S)__(?![\p{L}\p{N}_])/.source, // 4: bold
      /\*(?=[^\s*])([\s\S]*?[^\s*])\*/.source, // 5: italic
      /(?<![\p{L}\p{N}_])_(?=[^\s_])([\s\S]*?[^\s_])_(?![\p{L}\p{N}_])/.source, // 6: italic
    ].join("|"),
    "u",
  );

  /** Append `text` to `parent` with inline Markdown as <code>, <strong> and <em> nodes. */
  function inline(parent, text) {
    let rest = text;
    for (let m = INLINE.exec(rest); m; m = INLINE.exec(rest)) {
      if (m.index) parent.append(rest.slice(0, m.index));
      if (m[1] !== undefined) parent.append(el("code", { text: m[2] }));
      else {
        const node = el(m[3] !== undefined || m[4] !== undefined ? "strong" : "em");
        inline(node, m[3] ?? m[4] ?? m[5] ?? m[6]);
        parent.append(node);
      }
      rest = rest.slice(m.index + m[0].length);
    }
    if (rest) parent.append(rest);
  }

  /** The element showing `text` as simple Markdown; every piece of text goes in as a text node. */
  function render(text) {
    const root = el("div", { class: "md" });
    const lines = String(text ?? "").split("\n");
    let para = [];
    const flush = () => {
      if (!para.length) return;
      const p = el("p");
      para.forEach((line, k) => {
        if (k) p.append(el("br"));
        inline(p, line);
      });
      root.append(p);
      para = [];
    };
    for (let i = 0; i < lines.length; ) {
      const line = lines[i];
      const fence = line.match(FENCE);
      const item = line.match(LIST);
      const heading = line.match(HEADING);
      if (fence) {
        flush();
        const body = [];
        for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) body.push(lines[i]);
        i++; // the closing fence (missing while an answer is still streaming: the block runs to the end)
        const code = el("code", { text: body.join("\n") });
        if (fence[2]) code.dataset.lang = fence[2];
        root.append(el("pre", {}, code));
      } else if (item) {
        flush();
        const ordered = /\d/.test(item[1]);
        const first = parseInt(item[1], 10);
        const list = el(ordered ? "ol" : "ul", { start: ordered && first !== 1 ? first : null });
        for (let m = item; m && /\d/.test(m[1]) === ordered; m = (lines[++i] ?? "").match(LIST)) {
          const li = el("li");
          inline(li, m[2]);
          list.append(li);
        }
        root.append(list);
      } else if (heading) {
        flush();
        const h = el(`h${Math.min(heading[1].length + 2, 6)}`);
        inline(h, heading[2]);
        root.append(h);
        i++;
      } else {
        if (line.trim()) para.push(line);
        else flush();
        i++;
      }
    }
    flush();
    return root;
  }
  window.genloopRender = render;

  // ---- state ----

  const state = {
    model: null,
    convId: null,
    messages: new Map(), // id -> {id, parent_id, role, content, status, completion_tokens, feedback[]}
    chosen: new Map(), // parent id ("" for the root) -> the child shown; default the newest
    busy: null, // {controller, answer} while an answer streams
    form: null, // {id, kind: "rate", rating} or {id, kind: "edit"}: the one open inline form
    draftSystem: "", // the system prompt typed for the next new chat
    bodies: new Map(), // message id -> its rendered body, for cheap updates while streaming
  };

  function children(parentId) {
    return [...state.messages.values()].filter((m) => (m.parent_id ?? "") === (parentId ?? ""));
  }

  /** The shown path: from the root, the chosen (else newest) child at each step. */
  function shownPath() {
    const path = [];
    for (let kids = children(null); kids.length; ) {
      const parent = path.length ? path[path.length - 1].id : "";
      const pick = kids.find((m) => m.id === state.chosen.get(parent)) ?? kids[kids.length - 1];
      path.push(pick);
      kids = children(pick.id);
    }
    return path;
  }

  function pathTo(message) {
    const path = [];
    for (let m = message; m; m = state.messages.get(m.parent_id)) path.unshift(m);
    return path;
  }

  const settings = () => ({
    temperature: Number($("temperature").value),
    maxTokens: Number($("max-tokens").value),
  });

  // ---- HTTP ----

  class APIError extends Error {
    constructor(message, status, code) {
      super(message);
      Object.assign(this, { status, code });
    }
  }

  async function api(path, { method = "GET", body, signal } = {}) {
    const headers = {};
    const key = localStorage.getItem(KEY_STORE);
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, { method, headers, signal, body: body && JSON.stringify(body) });
    if (!res.ok) {
      let error = {};
      try {
        error = (await res.json()).error ?? {};
      } catch {
        /* not JSON: the status line says it */
      }
      if (res.status === 401) $("settings").open = true; // the key field is where to fix it
      throw new APIError(error.message || `${res.status} ${res.statusText}`, res.status, error.code);
    }
    return res;
  }

  const getJSON = async (path) => (await api(path)).json();

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  /** Run `fn`, showing its failure to the user instead of throwing. */
  async function guarded(fn) {
    try {
      return await fn();
    } catch (err) {
      showError(err.message);
      return undefined;
    }
  }

  // ---- model, conversation list, one conversation ----

  async function loadModel() {
    const models = await getJSON("/v1/models");
    state.model = models.data[0]?.id ?? null;
    $("model-name").textContent = state.model ?? "(none)";
  }

  async function refreshList() {
    const ul = $("conversation-list");
    let list;
    try {
      list = await getJSON("/v1/conversations");
    } catch (err) {
      if (err.code !== "store_disabled") throw err;
      // A server started with --no-store: chatting works, nothing is kept (nor can get feedback).
      ul.replaceChildren(el("li", { class: "note", text: "This server keeps no conversations." }));
      return;
    }
    ul.replaceChildren(
      ...list.data.map((c) => {
        const title = c.title || "Untitled";
        return el(
          "li",
          {},
          el("button", {
            type: "button",
            class: "open",
            testid: "conversation-item",
            "data-id": c.id,
            "aria-current": c.id === state.convId ? "page" : null,
            title: `${title} (${c.message_count} messages)`,
            text: title,
            on: {
              click: () => {
                if (state.busy) return;
                showError("");
                guarded(() => openConversation(c.id));
              },
            },
          }),
          el("button", {
            type: "button",
            class: "delete",
            testid: "delete-conversation",
            "aria-label": `Delete conversation ${title}`,
            title: "Delete this conversation",
            text: "×",
            on: { click: () => guarded(() => deleteConversation(c.id, title)) },
          }),
        );
      }),
    );
  }

  async function deleteConversation(id, title) {
    if (!window.confirm(`Delete "${title}" and its feedback?`)) return;
    await api(`/v1/conversations/${encodeURIComponent(id)}`, { method: "DELETE" });
    if (id === state.convId) newChat();
    await refreshList();
  }

  async function openConversation(id) {
    const conv = await getJSON(`/v1/conversations/${encodeURIComponent(id)}`);
    if (id !== state.convId) state.chosen.clear(); // sibling choices belong to one conversation
    state.convId = id;
    state.form = null;
    state.messages = new Map(conv.messages.map((m) => [m.id, m]));
    if (location.hash.slice(1) !== id) history.replaceState(null, "", `#${id}`);
    renderConversation(true);
    for (const li of $("conversation-list").querySelectorAll("button.open")) {
      li.toggleAttribute("aria-current", li.dataset.id === id);
    }
    return conv;
  }

  function newChat() {
    state.convId = null;
    state.messages = new Map();
    state.chosen.clear();
    state.form = null;
    history.replaceState(null, "", location.pathname);
    showError("");
    renderConversation();
    $("composer-input").focus();
  }

  // ---- sending, regenerating, streaming ----

  async function send(text) {
    const path = shownPath();
    const system = $("system-prompt").value.trim();
    const fresh = []; // this exchange's messages, shown before the server has stored them
    let parent = path[path.length - 1] ?? null;
    if (!path.length && system) {
      parent = addLocal(fresh, { parent_id: null, role: "system", content: system });
      path.push(parent);
    }
    const user = addLocal(fresh, { parent_id: parent?.id ?? null, role: "user", content: text });
    const body = { messages: [...path, user].map(({ role, content }) => ({ role, content })) };
    if (state.convId) Object.assign(body, { conversation_id: state.convId, parent_id: parent?.id });
    const failed = await stream(body, user, fresh);
    if (failed) $("composer-input").value ||= text; // nothing was answered: give the text back
  }

  async function regenerate(answer) {
    const user = state.messages.get(answer.parent_id);
    const body = {
      messages: pathTo(user).map(({ role, content }) => ({ role, content })),
      conversation_id: state.convId,
      parent_id: user.id,
      regenerate: true,
    };
    await stream(body, user, []);
  }

  let localCount = 0;
  function addLocal(fresh, message) {
    const m = { id: `local-${++localCount}`, status: "complete", feedback: [], ...message };
    state.messages.set(m.id, m);
    fresh.push(m);
    return m;
  }

  /** Stream one answer to `user`; returns true when no answer was started (the request failed). */
  async function stream(body, user, fresh) {
    const { temperature, maxTokens } = settings();
    const answer = addLocal(fresh, { parent_id: user.id, role: "assistant", content: "" });
    Object.assign(answer, { status: "streaming", completion_tokens: 0 });
    state.chosen.set(user.id, answer.id);
    const controller = new AbortController();
    state.busy = { controller, answer };
    state.form = null;
    showError("");
    renderConversation(true);
    let convId = body.conversation_id;
    let answerId = null;
    try {
      const res = await api("/v1/chat/completions", {
        method: "POST",
        signal: controller.signal,
        body: {
          model: state.model,
          temperature,
          max_tokens: maxTokens,
          stream: true,
          stream_options: { include_usage: true },
          ...body,
        },
      });
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const lines = (buffer + value).split("\n");
        buffer = lines.pop(); // an event cut between two reads waits for its end
        for (const line of lines) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const chunk = JSON.parse(line.slice(6));
          if (chunk.error) throw new APIError(chunk.error.message);
          convId = chunk.conversation_id ?? convId;
          answerId = chunk.message_id ?? answerId;
          const choice = chunk.choices?.[0];
          if (choice?.delta?.content) answer.content += choice.delta.content;
          if (choice && !choice.delta?.role) answer.completion_tokens += 1; // about one token a chunk
          if (choice?.finish_reason) answer.finish_reason = choice.finish_reason;
          if (chunk.usage) answer.completion_tokens = chunk.usage.completion_tokens;
        }
        scheduleUpdate(answer);
      }
      answer.status = "complete";
    } catch (err) {
      answer.status = err.name === "AbortError" ? "cancelled" : "error";
      if (answer.status === "error") showError(err.message);
    } finally {
      state.busy = null;
    }
    if (convId) await guarded(() => settle(convId, answerId, answer));
    else {
      // Not stored: refused or stopped before the first byte (drop it), or a --no-store server (keep it).
      const kept = answer.status !== "error" && (answer.status === "complete" || answer.content);
      if (!kept) for (const m of fresh) state.messages.delete(m.id);
      renderConversation();
      if (kept) return false;
    }
    await guarded(refreshList);
    return !answerId;
  }

  /** Reload the stored conversation after an answer ends. A stopped answer may still be "pending"
   * for a moment (the server notices the closed connection on its next token), so wait briefly and
   * otherwise show the text we received. */
  async function settle(convId, answerId, answer) {
    const keep = new Map(state.chosen);
    for (let tries = 0; ; tries++) {
      await openConversation(convId);
      const stored = state.messages.get(answerId);
      if (!stored || stored.status !== "pending" || tries >= 10) break;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    state.chosen = keep;
    const stored = state.messages.get(answerId);
    if (stored) {
      state.chosen.set(stored.parent_id ?? "", stored.id);
      const { content, status, completion_tokens } = answer;
      if (stored.status === "pending") Object.assign(stored, { content, status, completion_tokens });
    }
    renderConversation();
  }

  let pending = null;
  function scheduleUpdate(answer) {
    // Re-render the streaming answer at most once a frame, however fast tokens arrive.
    pending ??= requestAnimationFrame(() => {
      pending = null;
      const body = state.bodies.get(answer.id);
      if (!body) return;
      body.replaceChildren(render(answer.content));
      body.parentElement.querySelector(".meta").textContent = metaText(answer);
      const box = $("messages");
      if (box.scrollHeight - box.scrollTop - box.clientHeight < 120) box.scrollTop = box.scrollHeight;
    });
  }

  // ---- feedback ----

  async function postFeedback(message, fields) {
    const res = await api("/v1/feedback", { method: "POST", body: { message_id: message.id, ...fields } });
    const { id } = await res.json();
    message.feedback = [...(message.feedback ?? []), { id, ...fields }];
    state.form = null;
    renderConversation();
  }

  const latest = (message, field) =>
    [...(message.feedback ?? [])].reverse().find((f) => f[field] !== null && f[field] !== undefined)?.[field];

  // ---- the conversation view ----

  const STATUS_WORDS = {
    streaming: "writing…",
    cancelled: "stopped",
    pending: "unfinished",
    error: "failed",
  };

  function metaText(m) {
    const parts = [STATUS_WORDS[m.status], m.completion_tokens ? `${m.completion_tokens} tokens` : null];
    if (m.finish_reason === "length" && m.status === "complete") parts.push("cut at max tokens");
    return parts.filter(Boolean).join(" · ");
  }

  /** Redraw the shown path; `toBottom` scrolls to the newest message, else the view stays put. */
  function renderConversation(toBottom = false) {
    const path = shownPath();
    const system = path[0]?.role === "system" ? path[0] : null;
    const prompt = $("system-prompt");
    // The system prompt is the conversation's first message: editable only before there is one.
    prompt.disabled = path.length > 0;
    prompt.title = path.length ? "Fixed once a conversation has started" : "";
    prompt.value = path.length ? (system?.content ?? "") : state.draftSystem;
    state.bodies.clear();
    const box = $("messages");
    const top = box.scrollTop;
    box.replaceChildren(...path.filter((m) => m.role !== "system").map(messageView));
    box.setAttribute("aria-busy", String(Boolean(state.busy)));
    box.scrollTop = toBottom ? box.scrollHeight : top;
    $("send").hidden = Boolean(state.busy);
    $("stop").hidden = !state.busy;
  }

  function button(label, testid, onClick, props = {}, ...content) {
    const attrs = { type: "button", testid, "aria-label": label, title: label, on: { click: onClick } };
    return el("button", { ...attrs, ...props }, ...content);
  }

  // Thumb icons as inline SVG (Feather's thumbs-up outline, MIT): emoji fonts are not everywhere and
  // the page loads nothing from outside the server.
  const THUMB =
    "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3z" +
    "M7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3";
  function thumb(down) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    const path = document.createElementNS(svg.namespaceURI, "path");
    const attrs = { viewBox: "0 0 24 24", width: 16, height: 16, fill: "none", stroke: "currentColor",
      "stroke-width": 2, "stroke-linecap": "round", "stroke-linejoin": "round", "aria-hidden": "true" };
    for (const [name, value] of Object.entries(attrs)) svg.setAttribute(name, value);
    path.setAttribute("d", THUMB);
    if (down) path.setAttribute("transform", "rotate(180 12 12)");
    svg.append(path);
    return svg;
  }

  function messageView(m) {
    const body = el("div", { class: "body", testid: "message-body" }, render(m.content));
    state.bodies.set(m.id, body);
    const view = el("article", {
      class: `message ${m.role}`,
      testid: "message",
      "data-role": m.role,
      "data-id": m.id,
      "data-status": m.status,
    });
    view.append(el("div", { class: "who", text: m.role === "user" ? "You" : state.model || "Assistant" }));
    const siblings = children(m.parent_id);
    const editing = state.form?.id === m.id && state.form.kind === "edit";
    view.append(editing ? correctionEditor(m) : body);
    const correction = latest(m, "correction");
    if (correction && !editing) {
      view.append(
        el(
          "div",
          { class: "correction", testid: "correction" },
          el("div", { class: "label", text: "Your correction" }),
          render(correction),
        ),
      );
    }
    const tools = el("div", { class: "tools" });
    if (siblings.length > 1) tools.append(...siblingSwitch(m, siblings));
    if (m.role === "assistant") {
      view.append(el("div", { class: "meta", testid: "message-meta", text: metaText(m) }));
      if (!state.busy && !m.id.startsWith("local-")) tools.append(...answerTools(m, siblings));
    }
    view.append(tools);
    if (state.form?.id === m.id && state.form.kind === "rate") view.append(rateForm(m, state.form.rating));
    return view;
  }

  function siblingSwitch(m, siblings) {
    const at = siblings.indexOf(m);
    const show = (k) => () => {
      state.chosen.set(m.parent_id ?? "", siblings[k].id);
      state.form = null;
      renderConversation();
    };
    const busy = Boolean(state.busy);
    return [
      button("Previous answer", "sibling-prev", show(at - 1), { text: "‹", disabled: busy || at === 0 }),
      el("span", { class: "count", testid: "sibling-count", text: `${at + 1}/${siblings.length}` }),
      button("Next answer", "sibling-next", show(at + 1), {
        text: "›",
        disabled: busy || at === siblings.length - 1,
      }),
    ];
  }

  function answerTools(m, siblings) {
    const rating = latest(m, "rating");
    const tools = [];
    const others = siblings.filter((s) => s !== m && !s.id.startsWith("local-"));
    if (others.length) {
      const preferred = (m.feedback ?? []).some((f) => f.preferred_over);
      tools.push(
        button("Prefer this answer over the other answers", "prefer", () =>
          // One preference per losing sibling: each pair is a training example.
          guarded(async () => {
            for (const other of others) await postFeedback(m, { preferred_over: other.id });
          }),
          { text: preferred ? "★ Preferred" : "☆ Prefer this answer", "aria-pressed": String(preferred) },
        ),
      );
    }
    const rate = (value) => () => {
      state.form = { id: m.id, kind: "rate", rating: value };
      renderConversation();
      $("feedback-comment")?.focus();
    };
    tools.push(
      button("Good answer", "thumb-up", rate(1), { "aria-pressed": String(rating === 1) }, thumb(false)),
      button("Bad answer", "thumb-down", rate(-1), { "aria-pressed": String(rating === -1) }, thumb(true)),
      button("Correct this answer", "edit", () => {
        state.form = { id: m.id, kind: "edit" };
        renderConversation();
        $("correction-input")?.focus();
      }, { text: "✎" }),
      button("Regenerate this answer", "regenerate", () => guarded(() => regenerate(m)), { text: "↻" }),
    );
    return tools;
  }

  function rateForm(m, rating) {
    const comment = el("input", {
      type: "text",
      maxlength: "10000",
      testid: "feedback-comment",
      "aria-label": "Comment (optional)",
      placeholder: rating > 0 ? "What was good? (optional)" : "What was wrong? (optional)",
    });
    const cancel = () => {
      state.form = null;
      renderConversation();
    };
    return el(
      "form",
      {
        class: "inline-form",
        testid: "feedback-form",
        on: {
          submit: (ev) => {
            ev.preventDefault();
            const fields = { rating };
            if (comment.value.trim()) fields.comment = comment.value.trim();
            guarded(() => postFeedback(m, fields));
          },
        },
      },
      thumb(rating < 0),
      comment,
      el("button", { type: "submit", testid: "feedback-submit", title: "Send the rating", text: "Send" }),
      button("Cancel", "feedback-cancel", cancel, { text: "Cancel" }),
    );
  }

  function correctionEditor(m) {
    const input = el("textarea", { rows: "6", testid: "correction-input", "aria-label": "Corrected answer" });
    input.value = latest(m, "correction") ?? m.content;
    const save = () => {
      if (!input.value.trim()) return showError("A correction cannot be empty.");
      return guarded(() => postFeedback(m, { correction: input.value }));
    };
    return el(
      "div",
      { class: "editor" },
      input,
      el(
        "div",
        { class: "tools" },
        button("Save the correction", "correction-save", save, { text: "Save correction" }),
        button("Cancel", "correction-cancel", () => {
          state.form = null;
          renderConversation();
        }, { text: "Cancel" }),
      ),
    );
  }

  // ---- wiring ----

  function restoreSettings() {
    const saved = JSON.parse(localStorage.getItem(SETTINGS_STORE) || "{}");
    for (const name of ["temperature", "max-tokens"]) {
      if (saved[name] !== undefined) $(name).value = saved[name];
      $(name).addEventListener("change", () => {
        const now = JSON.parse(localStorage.getItem(SETTINGS_STORE) || "{}");
        localStorage.setItem(SETTINGS_STORE, JSON.stringify({ ...now, [name]: $(name).value }));
      });
    }
    $("api-key").value = localStorage.getItem(KEY_STORE) || "";
  }

  function submitComposer() {
    const input = $("composer-input");
    const text = input.value;
    if (!text.trim() || state.busy) return;
    const { temperature, maxTokens } = settings();
    if (!(temperature >= 0 && temperature <= 2)) return showError("Temperature must be between 0 and 2.");
    if (!(Number.isInteger(maxTokens) && maxTokens >= 1)) {
      return showError("Max tokens must be a whole number ≥ 1.");
    }
    input.value = "";
    guarded(() => send(text));
  }

  async function start() {
    restoreSettings();
    $("composer").addEventListener("submit", (ev) => {
      ev.preventDefault();
      submitComposer();
    });
    $("composer-input").addEventListener("keydown", (ev) => {
      // Enter sends; Shift+Enter (and Enter while an input method is composing) adds a newline.
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        submitComposer();
      }
    });
    $("stop").addEventListener("click", () => state.busy?.controller.abort());
    $("system-prompt").addEventListener("input", (ev) => {
      state.draftSystem = ev.target.value;
    });
    $("new-chat").addEventListener("click", () => !state.busy && newChat());
    $("settings-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("api-key").value.trim();
      if (key) localStorage.setItem(KEY_STORE, key);
      else localStorage.removeItem(KEY_STORE);
      showError("");
      guarded(init);
    });
    window.addEventListener("hashchange", () => {
      const id = location.hash.slice(1);
      if (id && id !== state.convId && !state.busy) guarded(() => openConversation(id));
    });
    renderConversation();
    await guarded(init);
  }

  async function init() {
    await loadModel();
    await refreshList();
    const id = location.hash.slice(1);
    if (id && id !== state.convId) await openConversation(id);
  }

  start();
})();
