// Small behaviours the pages share. No inline scripts: everything hangs off data-* attributes.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  const text = source.value !== undefined ? source.value : source.textContent;
  navigator.clipboard.writeText(text.trim()).then(
    () => { button.textContent = "Copied"; },
    () => { source.select && source.select(); button.textContent = "Press Ctrl+C"; },
  );
});

// A secret shown once ([data-show-once]) must not come back with the back button: drop it
// before the page goes into the back/forward cache, and again if a cached copy is shown.
const dropShownOnce = () => document.querySelectorAll("[data-show-once]").forEach((el) => el.remove());
window.addEventListener("pagehide", dropShownOnce);
window.addEventListener("pageshow", (event) => { if (event.persisted) dropShownOnce(); });
