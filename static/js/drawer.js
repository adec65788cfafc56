// Narrow screens (below 720 px): the conversation list (<nav class="sidebar">) becomes an
// off-canvas drawer opened by the menu button in the chat header. While it is open the rest
// of the page is inert, focus moves into the drawer and stays there (Tab wraps), and Esc, a
// click on the backdrop, following a link in it, or widening the window closes it; focus then
// returns to the menu button. Also: keeps the layout above the on-screen keyboard where the
// browser ignores `interactive-widget=resizes-content`.

const NARROW = window.matchMedia("(max-width: 720px)");
const FOCUSABLE = [
  "a[href]", "button:not([disabled])", "input:not([disabled]):not([type=hidden])",
  "select:not([disabled])", "textarea:not([disabled])", "[tabindex]:not([tabindex='-1'])",
].join(",");

export function setUpDrawer({ button, drawer, layout, main }) {
  if (!button || !drawer || !layout || !main) return null;
  const backdrop = document.createElement("div");
  backdrop.className = "drawer-backdrop";
  backdrop.hidden = true;
  layout.append(backdrop);
  // A visible way out on touch screens (no Esc key); shown only while narrow (app.css).
  const closeButton = document.createElement("button");
  closeButton.type = "button";
  closeButton.className = "drawer-close";
  closeButton.textContent = "Close";
  closeButton.setAttribute("aria-label", "Close conversations");
  (drawer.querySelector(".sidebar-head") || drawer).prepend(closeButton);
  let isOpen = false;

  const focusables = () =>
    [...drawer.querySelectorAll(FOCUSABLE)].filter((node) => node.getClientRects().length > 0);

  function open() {
    if (isOpen || !NARROW.matches) return;
    isOpen = true;
    layout.classList.add("drawer-open");
    backdrop.hidden = false;
    button.setAttribute("aria-expanded", "true");
    main.inert = true;
    const current = drawer.querySelector("a[aria-current=page]");
    (current && current.getClientRects().length ? current : drawer.querySelector(".new-chat"))?.focus();
  }

  function close({ returnFocus = true } = {}) {
    if (!isOpen) return;
    isOpen = false;
    layout.classList.remove("drawer-open");
    backdrop.hidden = true;
    button.setAttribute("aria-expanded", "false");
    main.inert = false;
    if (returnFocus && NARROW.matches) button.focus();
  }

  button.addEventListener("click", () => (isOpen ? close() : open()));
  backdrop.addEventListener("click", () => close());
  closeButton.addEventListener("click", () => close());

  document.addEventListener("keydown", (event) => {
    if (!isOpen) return;
    if (event.key === "Escape") {
      event.preventDefault();
      close();
      return;
    }
    if (event.key !== "Tab") return;
    const nodes = focusables();
    if (!nodes.length) return;
    const first = nodes[0];
    const last = nodes[nodes.length - 1];
    if (!drawer.contains(document.activeElement)) {
      event.preventDefault();
      first.focus();
    } else if (event.shiftKey && document.activeElement === first) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  });

  // Navigation closes it: a link followed inside it, history moves, a page from the cache.
  drawer.addEventListener("click", (event) => {
    if (event.target instanceof Element && event.target.closest("a[href]")) {
      close({ returnFocus: false });
    }
  });
  window.addEventListener("popstate", () => close({ returnFocus: false }));
  window.addEventListener("pageshow", () => close({ returnFocus: false }));
  NARROW.addEventListener("change", () => close({ returnFocus: false }));

  return { open, close, isOpen: () => isOpen };
}

// Fallback for browsers that overlay the on-screen keyboard instead of resizing the layout
// (they ignore interactive-widget=resizes-content, and 100dvh does not shrink): size the
// page to the visual viewport (--viewport-height, read by app.css) so the composer stays in
// view. Not while pinch-zoomed, where the visual viewport is smaller for another reason.
export function followVisualViewport(root = document.documentElement) {
  const viewport = window.visualViewport;
  if (!viewport) return;
  const update = () => {
    if (Math.abs(viewport.scale - 1) > 0.01) return;
    if (viewport.height < window.innerHeight - 1) {
      root.style.setProperty("--viewport-height", `${Math.round(viewport.height)}px`);
    } else {
      root.style.removeProperty("--viewport-height");
    }
  };
  viewport.addEventListener("resize", update);
  update();
}
