// Code blocks of rendered replies: a copy button on each (copies the code's text), with the
// language shown when the server named one. Built with createElement/textContent only.

let liveRegion = null;

function announce(text) {
  // One polite status region for the page: screen readers say "Copied".
  if (!liveRegion) {
    liveRegion = document.createElement("div");
    liveRegion.className = "visually-hidden";
    liveRegion.setAttribute("role", "status");
    liveRegion.id = "copy-status";
    document.body.append(liveRegion);
  }
  liveRegion.textContent = "";
  window.setTimeout(() => {
    liveRegion.textContent = text;
  }, 50);
}

// Copy `text` to the clipboard: the async Clipboard API where the page may use it, else the
// old execCommand("copy") on a hidden textarea. Resolves to whether it worked.
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // Permission refused or not focused: try the fallback.
    }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "visually-hidden";
  document.body.append(area);
  area.select();
  let copied = false;
  try {
    copied = document.execCommand("copy");
  } catch {
    copied = false;
  }
  area.remove();
  return copied;
}

function languageOf(code) {
  const name = [...code.classList].find((cls) => cls.startsWith("language-"));
  return name ? name.slice("language-".length) : "";
}

function addCopyButton(pre) {
  const code = pre.querySelector("code") || pre;
  const block = document.createElement("div");
  block.className = "code-block";
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const language = languageOf(code);
  const label = document.createElement("span");
  label.className = "code-lang";
  label.textContent = language;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "code-copy";
  button.textContent = "Copy";
  button.setAttribute("aria-label", language ? `Copy ${language} code` : "Copy code");
  let reset = 0;
  button.addEventListener("click", async () => {
    const copied = await copyText(code.textContent);
    button.textContent = copied ? "Copied" : "Copy failed";
    announce(copied ? "Copied" : "Copy failed");
    window.clearTimeout(reset);
    reset = window.setTimeout(() => {
      button.textContent = "Copy";
    }, 2000);
  });
  bar.append(label, button);
  pre.before(block);
  block.append(bar, pre);
}

// Give every code block under `root` (a reply's .markdown body, or the transcript) a copy
// button; blocks that have one already are left alone.
export function enhanceCodeBlocks(root) {
  for (const pre of root.querySelectorAll("pre")) {
    if (!pre.closest(".markdown") || pre.parentElement.classList.contains("code-block")) continue;
    addCopyButton(pre);
  }
}
