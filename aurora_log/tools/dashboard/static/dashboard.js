// Live updates without a reload: every few seconds fetch this page's live part (the server
// renders it, escaped) and swap it in. Paused while the tab is hidden or a form is in use.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || live.dataset.live !== "on") return;
  var every = Number(live.dataset.every || "2000");
  var busy = false;
  function tick() {
    if (busy || document.hidden) return;
    var active = document.activeElement;
    if (active && live.contains(active) && active.tagName !== "BODY") return;
    busy = true;
    fetch(window.location.href, {headers: {"X-Live": "1"}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html !== null) {
          live.innerHTML = html;
          var stamp = document.getElementById("updated");
          if (stamp) stamp.textContent = new Date().toISOString().slice(11, 19) + "Z";
        }
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  setInterval(tick, every);
  // confirmations for actions that change the store
  document.addEventListener("submit", function (ev) {
    var msg = ev.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) ev.preventDefault();
  });
})();
