// Per-message tools of the chat page: timestamps, copy as Markdown, regenerate the last
// reply, edit and resend the last message, earlier versions, stop with Esc.
// Imported by chat.js, which calls `remember` for each message it draws and `installMessages`
// once. Protocol: docs/websocket-protocol.md (`regenerate`, `edit`, `accepted.revision`).
// Model output is inserted as text, or as the server-sanitised `html` of finished replies.

import { copyText } from "./code-blocks.js";

const raw = new Map(); // message id -> its stored text (Markdown for replies), for copying
let deps = null; // { state, el, resubscribe, showError, clearError }

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
});
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long" });

// --- Timestamps ------------------------------------------------------------------------------

function localTime(node) {
  // <time datetime="ISO">: shown in the reader's own time zone (the server renders UTC).
  const when = new Date(node.getAttribute("datetime"));
  if (Number.isNaN(when.getTime())) return;
  const today = new Date().toDateString() === when.toDateString();
  node.textContent = (today ? timeFormat : dateTimeFormat).format(when);
  node.title = fullFormat.format(when);
}

function timeElement(iso) {
  const node = document.createElement("time");
  node.className = "msg-time";
  node.setAttribute("datetime", iso);
  localTime(node);
  return node;
}

// --- The head of a message: role, version, time, buttons ------------------------------------

function head(article) {
  let row = article.querySelector(":scope > .msg-head");
  if (!row) {
    const label = article.querySelector(":scope > .msg-role");
    row = document.createElement("div");
    row.className = "msg-head";
    label.before(row);
    row.append(label);
  }
  let meta = row.querySelector(".msg-meta");
  if (!meta) {
    meta = document.createElement("div");
    meta.className = "msg-meta";
    row.append(meta);
  }
  let actions = meta.querySelector(".msg-actions");
  if (!actions) {
    actions = document.createElement("span");
    actions.className = "msg-actions";
    meta.append(actions);
  }
  return { row, meta, actions };
}

function button(className, text, label) {
  const node = document.createElement("button");
  node.type = "button";
  node.className = `msg-action ${className}`;
  node.textContent = text;
  node.setAttribute("aria-label", label);
  return node;
}

function costText(usage) {
  const tokens = (usage.input_tokens || 0) + (usage.output_tokens || 0);
  return `${tokens} tokens · ${usage.cost} ${usage.currency}` + (usage.estimated ? " (estimated)" : "");
}

function versionsBlock(versions) {
  // The same markup as templates/conversations/_versions.html.
  const details = document.createElement("details");
  details.className = "msg-versions";
  const summary = document.createElement("summary");
  summary.textContent = `${versions.length} earlier version${versions.length === 1 ? "" : "s"}`;
  details.append(summary);
  for (const version of versions) {
    const item = document.createElement("section");
    item.className = "version-item";
    item.dataset.id = version.id;
    item.dataset.status = version.status;
    const title = document.createElement("p");
    title.className = "version-head";
    title.append(`Version ${version.version}`);
    if (version.created_at) title.append(" · ", timeElement(version.created_at));
    if (version.status === "cancelled") title.append(" · stopped");
    const body = document.createElement("div");
    if (version.html !== undefined) {
      body.className = "version-body markdown";
      body.innerHTML = version.html; // rendered from Markdown and sanitised on the server
    } else {
      body.className = "version-body msg-text";
      body.textContent = version.text || "";
    }
    item.append(title, body);
    if (version.error) {
      const error = document.createElement("p");
      error.className = "version-error";
      error.textContent = version.error;
      item.append(error);
    }
    if (version.usage && version.usage.cost !== null && version.usage.cost !== undefined) {
      const cost = document.createElement("p");
      cost.className = "version-cost";
      cost.textContent = costText(version.usage);
      item.append(cost);
    }
    const copy = button("act-copy", "Copy", `Copy version ${version.version} as Markdown`);
    copy.dataset.copy = version.id;
    title.append(" ", copy);
    if (version.text !== undefined) raw.set(version.id, version.text);
    details.append(item);
  }
  return details;
}

// Called by chat.js for each message it draws or updates (snapshot, accepted, done).
export function remember(article, message) {
  if (!article || !message) return;
  if (message.id && typeof message.text === "string") raw.set(message.id, message.text);
  const { meta, actions, row } = head(article);
  if (message.created_at && !meta.querySelector(":scope > time")) {
    meta.insertBefore(timeElement(message.created_at), actions);
  }
  if (message.version && !meta.querySelector(".msg-version")) {
    const label = document.createElement("span");
    label.className = "msg-version";
    label.textContent = `Version ${message.version} of ${message.version}`;
    meta.insertBefore(label, meta.firstChild);
  }
  if (message.versions && message.versions.length && !article.querySelector(":scope > .msg-versions")) {
    row.after(versionsBlock(message.versions));
  }
  if (!actions.querySelector(".act-copy")) {
    actions.prepend(button("act-copy", "Copy", "Copy this message as Markdown"));
  }
}

// --- Copy ------------------------------------------------------------------------------------

function textOf(id, fallbackNode) {
  if (raw.has(id)) return raw.get(id);
  return fallbackNode ? fallbackNode.innerText : "";
}

async function onCopy(target) {
  const item = target.closest("[data-id]");
  const id = target.dataset.copy || (item && item.dataset.id);
  const body = target.dataset.copy
    ? item.querySelector(".version-body")
    : item && item.querySelector(":scope > .msg-body");
  const ok = await copyText(textOf(id, body));
  target.textContent = ok ? "Copied" : "Copy failed";
  setTimeout(() => { target.textContent = "Copy"; }, 1500);
}

// --- Regenerate and edit ---------------------------------------------------------------------

function busy() {
  const { state } = deps;
  return Boolean(state.reply || state.pendingBubble || state.revising ||
    deps.el.transcript.querySelector('article.msg[data-status="pending"], article.msg[data-status="streaming"]'));
}

function canSend() {
  const { state } = deps;
  if (!state.conversation || !state.socket || state.socket.readyState !== WebSocket.OPEN) {
    deps.showError("Not connected. Reconnecting, please try again in a moment.");
    return false;
  }
  return !busy();
}

function sendRevision(frame) {
  deps.clearError();
  deps.state.revising = frame.type;
  deps.state.socket.send(JSON.stringify({
    ...frame, conversation: deps.state.conversation, model: deps.el.model.value,
  }));
  refreshActions();
}

function onRegenerate(article) {
  if (!canSend()) return;
  sendRevision({ type: "regenerate", message: article.dataset.id });
}

function closeEditor(article) {
  article.querySelector(":scope > .msg-edit")?.remove();
  const body = article.querySelector(":scope > .msg-body");
  if (body) body.hidden = false;
  article.querySelector(".act-edit")?.focus();
}

function onEdit(article) {
  if (!canSend() || article.querySelector(":scope > .msg-edit")) return;
  const body = article.querySelector(":scope > .msg-body");
  const form = document.createElement("form");
  form.className = "msg-edit";
  const area = document.createElement("textarea");
  area.value = textOf(article.dataset.id, body);
  area.rows = Math.min(10, Math.max(2, area.value.split("\n").length));
  area.setAttribute("aria-label", "Edit your message");
  area.maxLength = deps.config.maxMessageChars;
  const row = document.createElement("div");
  row.className = "msg-edit-actions";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "button-secondary";
  cancel.textContent = "Cancel";
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "button-primary";
  save.textContent = "Send";
  row.append(cancel, save);
  form.append(area, row);
  body.hidden = true;
  body.after(form);
  area.focus();
  cancel.addEventListener("click", () => closeEditor(article));
  const submit = () => {
    const text = area.value;
    if (!text.trim() || !canSend()) return;
    save.disabled = true;
    sendRevision({ type: "edit", message: article.dataset.id, text });
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      closeEditor(article);
    }
  });
}

function refreshActions() {
  // Regenerate on the last reply once it has finished; Edit on the last message of the
  // person's; neither while a reply is being written (the server checks this too).
  const articles = [...deps.el.transcript.querySelectorAll(":scope > article.msg")];
  const lastReply = articles.filter((a) => a.classList.contains("msg-assistant")).pop();
  const lastUser = articles.filter((a) => a.classList.contains("msg-user")).pop();
  const idle = !busy();
  for (const article of articles) {
    if (!article.dataset.id) continue;
    const { actions } = head(article);
    if (!actions.querySelector(".act-copy")) actions.prepend(button("act-copy", "Copy", "Copy this message as Markdown"));
    const finished = ["complete", "cancelled", "failed"].includes(article.dataset.status);
    const wants = {
      "act-regenerate": idle && article === lastReply && article === articles[articles.length - 1] && finished,
      "act-edit": idle && article === lastUser,
    };
    for (const [className, wanted] of Object.entries(wants)) {
      const existing = actions.querySelector(`.${className}`);
      if (wanted && !existing) {
        actions.append(className === "act-regenerate"
          ? button(className, "Regenerate", "Regenerate this reply")
          : button(className, "Edit", "Edit and resend this message"));
      } else if (!wanted && existing && !article.querySelector(":scope > .msg-edit")) {
        existing.remove();
      }
    }
  }
}

// --- Frames and keys -------------------------------------------------------------------------

// chat.js hands `accepted` frames with a `revision` here: the new version is drawn from the
// conversation's snapshot (with the earlier versions), then streams like any reply.
export function revisionAccepted(frame) {
  deps.state.revising = null;
  deps.resubscribe();
  return frame;
}

// chat.js calls this for an `error` without `message`: true when it answers our regenerate
// or edit (the banner shows its reason; the buttons come back).
export function revisionRefused() {
  if (!deps || !deps.state.revising) return false;
  deps.state.revising = null;
  deps.el.transcript.querySelectorAll(".msg-edit button[type=submit]").forEach((b) => { b.disabled = false; });
  refreshActions();
  return true;
}

export function installMessages(dependencies) {
  deps = dependencies;
  deps.state.revising = null;
  const { el } = deps;
  el.transcript.querySelectorAll("time[datetime]").forEach(localTime);
  el.transcript.addEventListener("click", (event) => {
    const target = event.target.closest("button.msg-action");
    if (!target) return;
    const article = target.closest("article.msg");
    if (target.classList.contains("act-copy")) onCopy(target);
    else if (target.classList.contains("act-regenerate")) onRegenerate(article);
    else if (target.classList.contains("act-edit")) onEdit(article);
  });
  new MutationObserver(refreshActions).observe(el.transcript, {
    childList: true, subtree: true, attributes: true, attributeFilter: ["data-status"],
  });
  // Esc stops the reply being written, wherever the focus is (not while editing, nor when
  // something else, e.g. an open dialog or menu, has already used the key).
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || event.defaultPrevented || event.isComposing) return;
    if (document.querySelector("dialog[open]")) return;
    if (deps.state.reply && !el.stop.hidden) {
      event.preventDefault();
      el.stop.click();
    }
  });
  refreshActions();
}
