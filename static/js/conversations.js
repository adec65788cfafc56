// Conversation actions on the chat page: rename, delete (with a confirmation dialog), export,
// and the sidebar's search over one's own conversations. Imported by chat.js.
// Every text from the server (titles, snippets, reasons) is inserted as text, never as HTML.

const $ = (id) => document.getElementById(id);

const el = {
  title: $("conversation-title"),
  actions: $("conversation-actions"),
  rename: $("rename-button"),
  exportLink: $("export-link"),
  remove: $("delete-button"),
  dialog: $("delete-dialog"),
  dialogName: $("delete-dialog-name"),
  dialogError: $("delete-dialog-error"),
  dialogConfirm: $("delete-confirm"),
  list: $("conversation-list"),
  error: $("error-banner"),
  searchForm: $("conversation-search"),
  searchInput: $("search-input"),
  searchPanel: $("search-panel"),
  searchStatus: $("search-status"),
  searchResults: $("search-results"),
};

let current = null; // public id of the open conversation, or null for a new one

function csrfToken() {
  const field = document.querySelector("input[name=csrfmiddlewaretoken]");
  return field ? field.value : "";
}

async function post(url, body) {
  // Answers {ok, data}; data is the JSON answer or {code, reason} for a failure.
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify(body || {}),
      credentials: "same-origin",
    });
  } catch {
    return { ok: false, data: { code: "network", reason: "The server could not be reached. Try again." } };
  }
  return { ok: response.ok, data: await answer(response) };
}

async function answer(response) {
  if ((response.headers.get("Content-Type") || "").includes("application/json")) {
    try {
      return await response.json();
    } catch {
      /* fall through */
    }
  }
  if (response.redirected) location.reload(); // the session ended: the sign-in page says why
  return { code: "internal", reason: `Something went wrong (HTTP ${response.status}). Try again.` };
}

function showError(text) {
  el.error.textContent = text;
  el.error.hidden = false;
}

function sidebarLink(id) {
  return el.list.querySelector(`a[data-id="${CSS.escape(id)}"]`);
}

function titleText() {
  return el.title.textContent.trim();
}

// --- The open conversation ---------------------------------------------------------------

export function conversationOpened(id) {
  // Called by chat.js when the first message of a new conversation is accepted.
  current = id;
  el.actions.hidden = !id;
  el.exportLink.href = id ? `/c/${id}/export.md` : "";
}

// --- Rename: the title becomes a text field; Enter saves, Escape cancels ---------------------

function startRename() {
  if (!current || el.title.querySelector("input")) return;
  el.error.hidden = true;
  const before = titleText();
  const input = document.createElement("input");
  input.type = "text";
  input.maxLength = 200;
  input.value = before;
  input.className = "title-input";
  input.setAttribute("aria-label", "Conversation title");
  el.title.replaceChildren(input);
  input.focus();
  input.select();
  let done = false;

  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.replace(/\s+/g, " ").trim();
    if (!save || title === before) {
      el.title.textContent = before;
      el.rename.focus();
      return;
    }
    input.disabled = true;
    const { ok, data } = await post(`/c/${current}/rename`, { title });
    if (!ok) {
      el.title.textContent = before;
      showError(data.reason);
      el.rename.focus();
      return;
    }
    el.error.hidden = true;
    el.title.textContent = data.title;
    document.title = `${data.title} · Enterprise AI`;
    const link = sidebarLink(current);
    if (link) link.textContent = data.title;
    el.rename.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      finish(true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
}

// --- Delete: a modal dialog (focus stays in it, Escape cancels) ------------------------------

function openDelete() {
  if (!current) return;
  el.error.hidden = true;
  el.dialogName.textContent = titleText();
  el.dialogError.hidden = true;
  el.dialogError.textContent = "";
  el.dialogConfirm.disabled = false;
  el.dialog.showModal();
}

async function confirmDelete() {
  el.dialogConfirm.disabled = true;
  const id = current;
  const { ok, data } = await post(`/c/${id}/delete`);
  if (!ok) {
    // A held conversation (code legal_hold) or a reply being written (busy): say why.
    el.dialogError.textContent = data.reason;
    el.dialogError.hidden = false;
    el.dialogConfirm.disabled = data.code === "legal_hold";
    $("delete-cancel").focus();
    return;
  }
  sidebarLink(id)?.closest("li")?.remove();
  el.dialog.close();
  location.assign("/"); // the open conversation is gone: start a new one
}

// --- Search ------------------------------------------------------------------------------

let searchTimer = null;
let searchSeq = 0;

function resultItem(hit) {
  const item = document.createElement("li");
  const link = document.createElement("a");
  link.href = hit.url;
  link.className = "search-hit";
  const title = document.createElement("span");
  title.className = "search-hit-title";
  title.textContent = hit.title || "Untitled";
  link.append(title);
  if (hit.snippet) {
    const snippet = document.createElement("span");
    snippet.className = "search-hit-snippet muted";
    snippet.textContent = hit.snippet;
    link.append(snippet);
  }
  item.append(link);
  return item;
}

function closeSearch() {
  el.searchPanel.hidden = true;
  el.list.hidden = false;
  el.searchResults.replaceChildren();
  el.searchStatus.textContent = "";
}

async function runSearch() {
  const query = el.searchInput.value.trim();
  if (query.length < 2) {
    closeSearch();
    return;
  }
  const seq = ++searchSeq;
  el.searchPanel.hidden = false;
  el.list.hidden = true;
  el.searchStatus.textContent = "Searching…";
  let data;
  try {
    const response = await fetch(`/search?q=${encodeURIComponent(query)}`, { credentials: "same-origin" });
    data = await answer(response);
    if (!response.ok) data = { error: data.reason || "The search failed." };
  } catch {
    data = { error: "The server could not be reached. Try again." };
  }
  if (seq !== searchSeq) return; // a newer search is under way
  if (data.error) {
    el.searchResults.replaceChildren();
    el.searchStatus.textContent = data.error;
    return;
  }
  const results = data.results || [];
  el.searchResults.replaceChildren(...results.map(resultItem));
  el.searchStatus.textContent = results.length
    ? `${results.length} conversation${results.length === 1 ? "" : "s"} found`
    : "No conversation matches every word.";
}

function scheduleSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, 250);
}

// A search result opens the conversation at the message that matched (#m-<id>): once the
// transcript is drawn (chat.js redraws it from the socket's snapshot), bring it into view.
function revealSearchHit() {
  const match = /^#m-([0-9a-f-]{36})$/.exec(location.hash);
  if (!match) return;
  const transcript = $("transcript");
  const reveal = () => {
    const article = transcript.querySelector(`article[data-id="${CSS.escape(match[1])}"]`);
    if (!article) return;
    article.classList.add("msg-found");
    article.scrollIntoView({ block: "center" });
  };
  reveal();
  const observer = new MutationObserver(reveal);
  observer.observe(transcript, { childList: true });
  setTimeout(() => observer.disconnect(), 5000);
}

export function setupConversations(conversationId) {
  conversationOpened(conversationId);
  el.rename.addEventListener("click", startRename);
  el.remove.addEventListener("click", openDelete);
  el.dialogConfirm.addEventListener("click", confirmDelete);
  el.searchForm.addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(searchTimer);
    runSearch();
  });
  el.searchInput.addEventListener("input", scheduleSearch);
  el.searchInput.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && el.searchInput.value) {
      event.preventDefault();
      el.searchInput.value = "";
      closeSearch();
    }
  });
  revealSearchHit();
}
