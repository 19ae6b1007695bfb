// trialscreen pages: the little behaviour that needs a script. Loaded from this origin only
// (no inline handlers: the Content-Security-Policy forbids them); every page works without it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("[data-print]")) {
    button.addEventListener("click", () => window.print());
  }
  const box = document.querySelector("[data-progress-url]");
  if (box) {
    followProgress(box);
  }
});

// A running population run: poll its status and move the bar; reload when it ends so the
// funnel and the candidate table appear.
function followProgress(box) {
  const url = box.getAttribute("data-progress-url");
  const bar = box.querySelector("progress");
  const text = box.querySelector("[aria-live]");
  const status = document.getElementById("run-status");
  const tick = async () => {
    let state;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!response.ok) {
        throw new Error(String(response.status));
      }
      state = await response.json();
    } catch (error) {
      window.setTimeout(tick, 3000);
      return;
    }
    bar.value = state.percent;
    bar.textContent = state.percent + "%";
    text.textContent = state.done + (state.total ? " of " + state.total : "") + " patients screened";
    if (status) {
      status.textContent = state.status;
    }
    if (state.status === "queued" || state.status === "running") {
      window.setTimeout(tick, 1000);
    } else {
      window.location.reload();
    }
  };
  window.setTimeout(tick, 1000);
}
