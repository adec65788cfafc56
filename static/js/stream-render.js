// A reply while it streams, shown as rendered Markdown rather than raw `**` and `>`.
//
// Safety: model output is untrusted, so this builds DOM nodes with createElement and
// textContent ONLY — never innerHTML, never an attribute taken from the text (no links, no
// images, no classes). It knows a small Markdown subset: paragraphs, headings, bold, italic,
// inline code, fenced code blocks (plain), lists and blockquotes; anything else (links,
// tables, HTML) stays plain text. When the reply is done the server's sanitised HTML
// (conversations/rendering.py) replaces all of it.
//
// Streaming: the text so far ends mid-sentence, so an opening `**` or backtick with no closer
// yet at the very end is taken as open (bold to the end) instead of showing the marker; an
// unclosed fence is a code block to the end.

const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*)|[ \t]*)$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const BULLET = /^\s*([-*+])(?:[ \t]+(.*)|[ \t]*)$/;
const ORDERED = /^\s*(\d{1,9})[.)](?:[ \t]+(.*)|[ \t]*)$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const ESCAPABLE = /[!-/:-@[-`{-~]/;
const MAX_DEPTH = 8; // nesting of quotes and emphasis; deeper stays text

function node(tag, text) {
  const element = document.createElement(tag);
  if (text !== undefined) element.textContent = text;
  return element;
}

function isBlank(line) {
  return line.trim() === "";
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || QUOTE.test(line) || RULE.test(line) ||
    BULLET.test(line) || ORDERED.test(line);
}

function runLength(text, index, char) {
  let end = index;
  while (text[end] === char) end += 1;
  return end - index;
}

// Where the closing delimiter `marker` (a run of * or _) of an emphasis opened before `from`
// is, or -1: the run must follow a non-space character and, for _, not precede a word.
function findCloser(text, from, marker) {
  let at = text.indexOf(marker, from);
  while (at !== -1) {
    const before = text[at - 1];
    const after = text[at + marker.length];
    const flanking = before !== undefined && !/\s/.test(before);
    const wordAfter = marker[0] === "_" && after !== undefined && /\w/.test(after);
    if (flanking && !wordAfter && at > from) return at;
    at = text.indexOf(marker, at + 1);
  }
  return -1;
}

// Append the inline Markdown of `text` to `parent`. `open`: this text is the end of the
// stream, so an unclosed delimiter is taken as still open.
function inline(parent, text, open, depth = 0) {
  let buffer = "";
  const flush = () => {
    if (buffer) parent.append(document.createTextNode(buffer));
    buffer = "";
  };
  let i = 0;
  while (i < text.length) {
    const char = text[i];
    if (char === "\\" && i + 1 < text.length && ESCAPABLE.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }
    if (char === "`") {
      const ticks = runLength(text, i, "`");
      const marker = "`".repeat(ticks);
      const close = text.indexOf(marker, i + ticks);
      if (close !== -1 || open) {
        const end = close === -1 ? text.length : close;
        const content = text.slice(i + ticks, end);
        flush();
        if (content) parent.append(node("code", content));
        i = close === -1 ? text.length : close + ticks;
        continue;
      }
      buffer += marker;
      i += ticks;
      continue;
    }
    if ((char === "*" || char === "_") && depth < MAX_DEPTH) {
      const run = Math.min(runLength(text, i, char), 3);
      const marker = char.repeat(run);
      const after = text[i + run];
      const before = text[i - 1];
      const canOpen = after !== undefined && !/\s/.test(after) &&
        !(char === "_" && before !== undefined && /\w/.test(before));
      if (after === undefined && open) {
        i += run; // a delimiter just arrived: show nothing until its text does
        continue;
      }
      if (canOpen) {
        const close = findCloser(text, i + run, marker);
        if (close !== -1 || open) {
          const end = close === -1 ? text.length : close;
          flush();
          let outer;
          let inner;
          if (run === 3) {
            outer = node("strong");
            inner = node("em");
            outer.append(inner);
          } else {
            outer = node(run === 2 ? "strong" : "em");
            inner = outer;
          }
          inline(inner, text.slice(i + run, end), close === -1 && open, depth + 1);
          parent.append(outer);
          i = close === -1 ? text.length : close + run;
          continue;
        }
      }
      buffer += marker;
      i += run;
      continue;
    }
    buffer += char;
    i += 1;
  }
  flush();
}

function fenceCloses(line, marker) {
  const match = FENCE.exec(line);
  return Boolean(match) && match[1][0] === marker[0] && match[1].length >= marker.length &&
    match[2].trim() === "";
}

// The blocks of `lines` as nodes. `open`: the last line is the end of the stream.
function blocks(lines, open, depth) {
  const out = [];
  let i = 0;
  const isLast = () => i >= lines.length;
  while (i < lines.length) {
    const line = lines[i];
    let match;
    if (isBlank(line)) {
      i += 1;
      continue;
    }
    if ((match = FENCE.exec(line))) {
      const marker = match[1];
      const body = [];
      i += 1;
      while (i < lines.length && !fenceCloses(lines[i], marker)) body.push(lines[i++]);
      // The closing fence arriving a backtick at a time: not part of the code.
      if (i >= lines.length && open && /^ {0,3}[`~]+$/.test(body[body.length - 1] || "")) body.pop();
      i += 1;
      const pre = node("pre");
      pre.append(node("code", body.join("\n")));
      out.push(pre);
      continue;
    }
    if (RULE.test(line)) {
      out.push(node("hr"));
      i += 1;
      continue;
    }
    if ((match = HEADING.exec(line))) {
      const heading = node(`h${match[1].length}`);
      i += 1;
      inline(heading, (match[2] || "").replace(/[ \t]+#+[ \t]*$/, ""), open && isLast(), MAX_DEPTH - 2);
      out.push(heading);
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && (match = QUOTE.exec(lines[i]))) {
        inner.push(match[1]);
        i += 1;
      }
      const quote = node("blockquote");
      if (depth < MAX_DEPTH) quote.append(...blocks(inner, open && isLast(), depth + 1));
      else quote.textContent = inner.join("\n");
      out.push(quote);
      continue;
    }
    if (BULLET.test(line) || ORDERED.test(line)) {
      const ordered = !BULLET.test(line);
      const pattern = ordered ? ORDERED : BULLET;
      const list = node(ordered ? "ol" : "ul");
      const first = ORDERED.exec(line);
      if (ordered && first && Number(first[1]) !== 1) list.start = Number(first[1]);
      const items = [];
      while (i < lines.length) {
        const current = lines[i];
        if ((match = pattern.exec(current)) && !RULE.test(current)) {
          items.push([match[2] || ""]);
        } else if (!isBlank(current) && /^\s{2,}/.test(current) && items.length) {
          items[items.length - 1].push(current.trim()); // continuation of the item
        } else {
          break;
        }
        i += 1;
      }
      items.forEach((item, index) => {
        const li = node("li");
        inline(li, item.join("\n"), open && isLast() && index === items.length - 1, 0);
        list.append(li);
      });
      out.push(list);
      continue;
    }
    const paragraph = [];
    while (i < lines.length && !isBlank(lines[i]) && !(paragraph.length && startsBlock(lines[i]))) {
      paragraph.push(lines[i]);
      i += 1;
    }
    const p = node("p");
    inline(p, paragraph.join("\n"), open && isLast(), 0);
    out.push(p);
  }
  return out;
}

// The streamed text so far as a DocumentFragment of safe nodes.
export function renderStreaming(text) {
  const fragment = document.createDocumentFragment();
  fragment.append(...blocks(String(text).replace(/\r\n?/g, "\n").split("\n"), true, 0));
  return fragment;
}

// Add a delta to a reply being streamed ({ body }) and redraw it at most once per frame.
// The redraw is skipped once the body is no longer a streamed one (the final HTML arrived).
export function appendStreamed(reply, text) {
  if (reply.streamText === undefined) reply.streamText = reply.body.textContent;
  reply.streamText += text;
  if (!reply.body.classList.contains("msg-streamed")) {
    reply.body.className = "msg-body markdown msg-streamed";
  }
  if (reply.frame) return;
  reply.frame = window.requestAnimationFrame(() => {
    reply.frame = 0;
    if (!reply.body.classList.contains("msg-streamed")) return;
    reply.body.replaceChildren(renderStreaming(reply.streamText));
  });
}
