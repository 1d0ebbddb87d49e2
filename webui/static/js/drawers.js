// The chat's responsive layout: the conversation list and the streams panel are columns on a
// wide screen and drawers over the chat on a narrow one. While a drawer covers the chat the
// rest of the page is inert, so keyboard focus stays in the drawer; Escape closes it.

const WIDE = window.matchMedia("(min-width: 1180px)");
const NARROW = window.matchMedia("(max-width: 819.98px)");
const PANEL_PREF = "ui:streams-panel";

export class Drawers {
  /** Elements by role; `onClosedByKey` runs after Escape closed a drawer. */
  constructor({ sidebar, streamsPanel, scrim, toggleSidebar, toggleStreams, closeSidebar, closeStreams, firstInSidebar }) {
    Object.assign(this, { sidebar, streamsPanel, scrim, toggleSidebar, toggleStreams, closeSidebar, closeStreams, firstInSidebar });
    this.body = document.body;
    toggleSidebar.addEventListener("click", () => this.setSidebarOpen(!this.#has("sidebar-open")));
    toggleStreams.addEventListener("click", () => this.setStreamsOpen(!this.#has("streams-open"), { focus: true }));
    closeSidebar.addEventListener("click", () => this.setSidebarOpen(false));
    closeStreams.addEventListener("click", () => this.setStreamsOpen(false, { focus: true }));
    scrim.addEventListener("click", () => this.close());
    document.addEventListener("keydown", (event) => {
      // (Not an Escape a field took for itself, such as the search clearing its text.)
      if (event.key === "Escape" && !event.defaultPrevented && this.isOverlayOpen()) {
        event.preventDefault();
        this.close({ focus: true });
      }
    });
    WIDE.addEventListener("change", () => this.setStreamsOpen(this.#panelPreferred()));
    NARROW.addEventListener("change", () => {
      if (!NARROW.matches) this.setSidebarOpen(false, { focus: false });
      this.#sync();
    });
    // The streams panel starts open where there is room for it, unless the user closed it.
    this.setStreamsOpen(this.#panelPreferred());
  }

  setStreamsOpen(open, { focus = false } = {}) {
    this.body.classList.toggle("streams-open", open);
    this.toggleStreams.setAttribute("aria-expanded", String(open));
    this.toggleStreams.setAttribute("aria-label", open ? "Hide streams panel" : "Show streams panel");
    if (WIDE.matches) localStorage.setItem(PANEL_PREF, open ? "open" : "closed");
    this.#sync();
    if (focus && open && !WIDE.matches) this.closeStreams.focus();
    else if (focus && !open) this.toggleStreams.focus();
  }

  setSidebarOpen(open, { focus = true } = {}) {
    this.body.classList.toggle("sidebar-open", open);
    this.toggleSidebar.setAttribute("aria-expanded", String(open));
    this.toggleSidebar.setAttribute("aria-label", open ? "Hide conversations" : "Show conversations");
    this.#sync();
    if (focus && open) this.firstInSidebar.focus();
    else if (focus && !open && NARROW.matches) this.toggleSidebar.focus();
  }

  /** Close whichever drawer covers the chat. */
  close({ focus = false } = {}) {
    if (this.#has("sidebar-open")) this.setSidebarOpen(false, { focus });
    if (!WIDE.matches && this.#has("streams-open")) this.setStreamsOpen(false, { focus });
  }

  isOverlayOpen() {
    return (NARROW.matches && this.#has("sidebar-open")) || (!WIDE.matches && this.#has("streams-open"));
  }

  #has(cls) {
    return this.body.classList.contains(cls);
  }

  #panelPreferred() {
    return WIDE.matches && localStorage.getItem(PANEL_PREF) !== "closed";
  }

  #sync() {
    const sidebarOverlay = NARROW.matches && this.#has("sidebar-open");
    const streamsOverlay = !WIDE.matches && this.#has("streams-open");
    const covered = sidebarOverlay || streamsOverlay;
    this.scrim.hidden = !covered;
    for (const selector of [".chat-main", ".topbar", ".skip-link"]) document.querySelector(selector).inert = covered;
    this.sidebar.inert = (NARROW.matches && !sidebarOverlay) || streamsOverlay;
    this.streamsPanel.inert = sidebarOverlay || (!WIDE.matches && !streamsOverlay);
  }
}
