// The chat page: one WebSocket, streamed replies, stop, reconnect.
// Protocol: docs/websocket-protocol.md. Model output arrives as plain text while streaming
// (inserted with textContent, never as HTML) and as server-sanitised HTML when done.

import { enhanceCodeBlocks } from "./code-blocks.js";
import { followVisualViewport, setUpDrawer } from "./drawer.js";
import { appendStreamed } from "./stream-render.js";
import "./model_info.js"; // the picker's description and price line
import { installMessages, remember, revisionAccepted, revisionRefused } from "./messages.js";
import { conversationOpened, setupConversations } from "./conversations.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);

const el = {
  transcript: document.getElementById("transcript"),
  form: document.getElementById("composer"),
  input: document.getElementById("composer-input"),
  send: document.getElementById("send-button"),
  stop: document.getElementById("stop-button"),
  model: document.getElementById("model-picker"),
  status: document.getElementById("connection-status"),
  error: document.getElementById("error-banner"),
  demo: document.getElementById("demo-notice"),
  title: document.getElementById("conversation-title"),
  list: document.getElementById("conversation-list"),
  count: document.getElementById("char-count"),
  budgets: document.getElementById("budget-status"),
};

const state = {
  socket: null,
  conversation: config.conversation,
  reply: null, // { id, seq, body, gap } of the reply being streamed
  pendingText: null, // text sent, waiting for "accepted" or "error"
  pendingBubble: null,
  resyncing: false, // a "subscribe" is on its way; its snapshot will redraw the page
  retries: 0,
};

// --- Rendering -------------------------------------------------------------------------------

function bubble(role, id, status) {
  const article = document.createElement("article");
  article.className = `msg msg-${role}`;
  if (id) article.dataset.id = id;
  article.dataset.status = status;
  const label = document.createElement("div");
  label.className = "msg-role";
  label.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "msg-body msg-text";
  article.append(label, body);
  el.transcript.append(article);
  return article;
}

function findBubble(id) {
  return el.transcript.querySelector(`article[data-id="${CSS.escape(id)}"]`);
}

function setHtml(article, html) {
  // `html` was rendered from Markdown and sanitised (nh3) on the server.
  const body = article.querySelector(".msg-body");
  body.className = "msg-body markdown";
  body.innerHTML = html;
  enhanceCodeBlocks(body);
}

function addNote(article, className, text) {
  article.querySelectorAll(".msg-note, .msg-error").forEach((node) => node.remove());
  const note = document.createElement("p");
  note.className = className;
  note.textContent = text;
  article.append(note);
}

function showCost(article, usage) {
  article.querySelectorAll(".msg-cost").forEach((node) => node.remove());
  if (!usage || usage.cost === null || usage.cost === undefined) return;
  const line = document.createElement("p");
  line.className = "msg-cost";
  const tokens = (usage.input_tokens || 0) + (usage.output_tokens || 0);
  line.textContent = `${tokens} tokens · ${usage.cost} ${usage.currency}` +
    (usage.estimated ? " (estimated)" : "");
  article.append(line);
}

function showBudgets(budgets) {
  // What is left of each budget that applies to this person (text only, never HTML).
  el.budgets.replaceChildren(...budgets.map((b) => {
    const span = document.createElement("span");
    span.className = "budget";
    span.dataset.blocking = String(b.blocking);
    span.textContent = `${b.name} (${b.period.toLowerCase()}): ${b.remaining} of ${b.limit} ` +
      `${b.currency} left · resets ${b.resets_at.slice(0, 10)}`;
    return span;
  }));
}

function toolLine(tool) {
  // Collapsed "used tool" line: arguments and result shown as text, never as HTML.
  const details = document.createElement("details");
  details.className = "tool-use";
  if (tool.is_error) details.dataset.error = "true";
  const summary = document.createElement("summary");
  summary.textContent = `Used tool: ${tool.name}${tool.is_error ? " (failed)" : ""}`;
  const body = document.createElement("pre");
  body.textContent = `${JSON.stringify(tool.arguments, null, 2)}\n\n${tool.result}`;
  details.append(summary, body);
  return details;
}

function renderExtras(article, tools, notice) {
  article.querySelectorAll(".tool-use, .msg-notice").forEach((node) => node.remove());
  const body = article.querySelector(".msg-body");
  for (const tool of tools || []) body.before(toolLine(tool));
  if (notice) {
    const line = document.createElement("p");
    line.className = "msg-notice";
    line.textContent = notice;
    body.before(line);
  }
}

function scrollToEnd() {
  el.transcript.scrollTop = el.transcript.scrollHeight;
}

function renderMessage(message) {
  const article = bubble(message.role, message.id, message.status);
  if (message.html !== undefined) {
    setHtml(article, message.html);
  } else {
    article.querySelector(".msg-body").textContent = message.text || "";
  }
  if (message.role === "assistant") renderExtras(article, message.tools, message.notice);
  if (message.status === "cancelled") addNote(article, "msg-note", "Stopped.");
  if (message.error) addNote(article, "msg-error", message.error);
  if (message.usage) showCost(article, message.usage); // finished replies, as `done` showed
  remember(article, message); // time, versions, copy (messages.js)
  return article;
}

function showError(text) {
  el.error.textContent = text;
  el.error.hidden = false;
}

function clearError() {
  el.error.hidden = true;
  el.error.textContent = "";
}

function setBusy(busy) {
  el.stop.hidden = !busy;
  el.send.hidden = busy;
}

function setConnection(stateName, text) {
  el.status.dataset.state = stateName;
  el.status.textContent = text;
  el.send.disabled = stateName !== "open";
}

function updateDemoNotice() {
  const option = el.model.selectedOptions[0];
  el.demo.hidden = !(option && option.dataset.demo === "true");
}

function updateCount() {
  const length = el.input.value.length;
  el.count.textContent = length > config.maxMessageChars * 0.8
    ? `${length.toLocaleString()} / ${config.maxMessageChars.toLocaleString()}`
    : "";
}

function addToSidebar(id, title) {
  el.list.querySelector(".empty")?.remove();
  el.list.querySelectorAll("a[aria-current]").forEach((a) => a.removeAttribute("aria-current"));
  const item = document.createElement("li");
  const link = document.createElement("a");
  link.href = `/c/${id}/`;
  link.dataset.id = id;
  link.textContent = title;
  link.setAttribute("aria-current", "page");
  item.append(link);
  el.list.prepend(item);
}

// --- Frames from the server ------------------------------------------------------------------

const handlers = {
  snapshot(frame) {
    state.resyncing = false;
    el.transcript.replaceChildren();
    state.reply = null;
    for (const message of frame.messages) {
      const article = renderMessage(message);
      if (message.role === "assistant" && (message.status === "pending" || message.status === "streaming")) {
        state.reply = { id: message.id, seq: message.seq || 0, body: article.querySelector(".msg-body"), gap: false };
      }
    }
    setBusy(state.reply !== null);
    scrollToEnd();
  },

  accepted(frame) {
    if (frame.revision) return revisionAccepted(frame); // a regenerate or an edit (messages.js)
    if (state.pendingBubble) {
      state.pendingBubble.dataset.id = frame.user_message;
      if (frame.notice) addNote(state.pendingBubble, "msg-note", frame.notice);
      remember(state.pendingBubble, { id: frame.user_message, text: state.pendingText, created_at: frame.user_created_at });
    }
    state.pendingText = null;
    state.pendingBubble = null;
    if (frame.created || !state.conversation) {
      state.conversation = frame.conversation;
      history.replaceState(null, "", `/c/${frame.conversation}/`);
      el.title.textContent = frame.title;
      document.title = `${frame.title} · Enterprise AI`;
      addToSidebar(frame.conversation, frame.title);
      conversationOpened(frame.conversation);
    }
    const article = bubble("assistant", frame.message, "pending");
    remember(article, { id: frame.message, created_at: frame.created_at });
    state.reply = { id: frame.message, seq: 0, body: article.querySelector(".msg-body"), gap: false };
    setBusy(true);
    scrollToEnd();
  },

  delta(frame) {
    const reply = state.reply;
    if (!reply || reply.id !== frame.message) {
      // A reply started elsewhere (another tab): fetch the conversation as stored.
      if (!state.pendingBubble && !findBubble(frame.message)) resubscribe();
      return;
    }
    reply.heardAt = Date.now();
    if (frame.seq <= reply.seq) return;
    if (frame.seq !== reply.seq + 1) {
      // A piece was lost on the way (the server's channel layer dropped it): redraw from the
      // stored text so far now, rather than showing a hole until "done".
      reply.gap = true;
      resubscribe();
      return;
    }
    reply.seq = frame.seq;
    appendStreamed(reply, frame.text); // safe DOM nodes only, redrawn once per frame
    reply.body.parentElement.dataset.status = "streaming";
    scrollToEnd();
  },

  done(frame) {
    const article = findBubble(frame.message);
    if (!article) {
      resubscribe();
      return;
    }
    article.dataset.status = frame.status;
    setHtml(article, frame.html);
    renderExtras(article, frame.tools, frame.notice);
    if (frame.status === "cancelled") addNote(article, "msg-note", "Stopped.");
    showCost(article, frame.usage);
    remember(article, { id: frame.message, text: frame.text });
    if (frame.budgets) showBudgets(frame.budgets);
    if (state.reply && state.reply.id === frame.message) state.reply = null;
    setBusy(state.reply !== null);
    scrollToEnd();
  },

  tool(frame) {
    const article = findBubble(frame.message);
    if (!article) return;
    article.querySelector(".msg-body").before(toolLine(frame.tool));
    scrollToEnd();
  },

  notice(frame) {
    const article = findBubble(frame.message);
    if (!article) return;
    const tools = [...article.querySelectorAll(".tool-use")];
    article.querySelectorAll(".msg-notice").forEach((node) => node.remove());
    const line = document.createElement("p");
    line.className = "msg-notice";
    line.textContent = frame.text;
    (tools.length ? tools[tools.length - 1] : article.querySelector(".msg-body")).before(line);
  },

  error(frame) {
    if (frame.message) {
      const article = findBubble(frame.message);
      if (article) {
        article.dataset.status = "failed";
        addNote(article, "msg-error", frame.reason);
        if (frame.usage) showCost(article, frame.usage); // charged for what had streamed
      }
      if (state.reply && state.reply.id === frame.message) state.reply = null;
      setBusy(state.reply !== null);
      return;
    }
    if (revisionRefused()) {
      showError(frame.reason);
      return;
    }
    if (state.pendingBubble) {
      // The message was refused and nothing was stored: give the text back.
      state.pendingBubble.remove();
      if (!el.input.value) el.input.value = state.pendingText || "";
      state.pendingBubble = null;
      state.pendingText = null;
      setBusy(state.reply !== null);
    }
    showError(frame.reason);
  },
};

// --- The socket ------------------------------------------------------------------------------

function resubscribe() {
  if (state.resyncing) return; // one snapshot at a time
  if (state.conversation && state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.resyncing = true;
    state.socket.send(JSON.stringify({ type: "subscribe", conversation: state.conversation }));
  }
}

function isForThisPage(frame) {
  // Frames about another conversation (an earlier subscription of this socket) are ignored.
  return !frame.conversation || frame.type === "accepted" || frame.conversation === state.conversation;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}${config.socketPath}`);
  state.socket = socket;
  setConnection("connecting", "Connecting…");

  socket.addEventListener("open", () => {
    state.retries = 0;
    state.resyncing = false;
    setConnection("open", "Connected");
    // On every (re)connect show what is stored, and follow a reply still being written.
    resubscribe();
  });

  socket.addEventListener("message", (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    const handler = handlers[frame.type];
    if (handler && isForThisPage(frame)) handler(frame);
  });

  socket.addEventListener("close", (event) => {
    if (state.socket !== socket) return;
    if (event.code === 4440) {
      // The session ended (signed out, expired, ended by an administrator): reloading
      // leads to the sign-in page, which says why.
      location.reload();
      return;
    }
    if (state.pendingBubble) handlers.error({ reason: "The connection was lost before the message was sent." });
    const delay = Math.min(15000, 500 * 2 ** state.retries) * (0.5 + Math.random() / 2);
    state.retries += 1;
    setConnection("closed", "Reconnecting…");
    setTimeout(connect, delay);
  });
}

function sendMessage() {
  const text = el.input.value;
  if (!text.trim() || state.pendingBubble || state.reply) return;
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
    showError("Not connected. Reconnecting, please try again in a moment.");
    return;
  }
  if (text.length > config.maxMessageChars) {
    showError(`The message is too long; the limit is ${config.maxMessageChars.toLocaleString()} characters.`);
    return;
  }
  clearError();
  const article = bubble("user", null, "complete");
  article.querySelector(".msg-body").textContent = text;
  state.pendingBubble = article;
  state.pendingText = text;
  el.input.value = "";
  updateCount();
  setBusy(true);
  state.socket.send(JSON.stringify({ type: "send", conversation: state.conversation, text, model: el.model.value }));
  scrollToEnd();
}

el.form.addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
});

el.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
});

el.input.addEventListener("input", updateCount);

el.stop.addEventListener("click", () => {
  if (state.reply && state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify({ type: "stop", message: state.reply.id }));
  }
});

el.model.addEventListener("change", updateDemoNotice);

updateDemoNotice();
enhanceCodeBlocks(el.transcript);
setUpDrawer({
  button: document.getElementById("menu-button"),
  drawer: document.getElementById("sidebar"),
  layout: document.querySelector(".layout"),
  main: document.querySelector("main.chat"),
});
followVisualViewport();
installMessages({ state, el, config, resubscribe, showError, clearError });
setupConversations(config.conversation);
connect();

// A reply that has been silent for a long time may have ended while a frame was lost on
// the way (the server drops messages it cannot deliver in time): ask for the stored state.
// A model thinking or a tool running keeps a reply silent too: the snapshot then simply
// shows it still streaming.
const SILENT_REPLY_MS = 20000;
setInterval(() => {
  const reply = state.reply;
  if (!reply) return;
  reply.heardAt = reply.heardAt || Date.now();
  if (Date.now() - reply.heardAt > SILENT_REPLY_MS) {
    reply.heardAt = Date.now();
    resubscribe();
  }
}, 5000);
