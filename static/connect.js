// /connect/<flow>#t=<token>: the token stays out of server logs and Referer headers. Read it from
// the fragment, remove it from the address bar (and history), then send it only as a request
// header: to load the form and with every htmx request inside it.
(function () {
  const box = document.querySelector("[data-flow-form]");
  if (!box) return;
  // A used or expired link (410) shows its explanation in place of the form.
  document.addEventListener("htmx:beforeSwap", (event) => {
    if (event.detail.xhr.status === 410) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
  const match = /(?:^#|&)t=([^&]+)/.exec(window.location.hash);
  const token = match ? decodeURIComponent(match[1]) : null;
  if (window.location.hash) {
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  if (!token) return;
  box.setAttribute("hx-headers", JSON.stringify({"X-Portcullis-Flow-Token": token}));
  const load = () => {
    if (!box.querySelector("[data-flow-loading]")) return;
    htmx.ajax("GET", box.dataset.flowForm, {target: "#flow-form", swap: "innerHTML",
                                            headers: {"X-Portcullis-Flow-Token": token}});
  };
  if (window.htmx) load(); else window.addEventListener("DOMContentLoaded", load);
})();
