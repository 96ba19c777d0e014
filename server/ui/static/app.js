// fedseg dashboard: refresh the live round panel every 2 s (no other script on the pages).
"use strict";
(function () {
  const panel = document.querySelector("[data-live-url]");
  if (!panel) {
    return;
  }
  const url = panel.getAttribute("data-live-url");
  async function refresh() {
    try {
      const response = await fetch(url, { credentials: "same-origin", redirect: "manual" });
      if (!response.ok) {
        return; // signed out or the server is restarting: keep the last view
      }
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      panel.replaceChildren(...doc.body.childNodes);
    } catch (error) {
      // the server is unreachable for a moment: try again on the next tick
    }
  }
  setInterval(refresh, 2000);
})();
