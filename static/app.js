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
