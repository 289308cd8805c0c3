// The console's only script: no build step. Live updates of an instance page (server-sent events),
// sortable tables, and the font path of Bootstrap Italia.
(function () {
  "use strict";
  var me = document.currentScript;
  if (me && me.dataset.vendor) { window.__PUBLIC_PATH__ = me.dataset.vendor + "/fonts"; }

  function liveInstance() {
    var root = document.getElementById("istanza");
    if (!root || !window.EventSource) { return; }
    var target = document.getElementById("stato-istanza");
    var announce = document.getElementById("annuncio");
    var source = new EventSource(root.dataset.events);
    var pending = false;
    function refresh() {
      if (pending) { return; }
      pending = true;
      fetch(root.dataset.fragment, { credentials: "same-origin" }).then(function (r) {
        if (!r.ok) { throw new Error(r.status); }
        return r.text();
      }).then(function (html) {
        var focused = document.activeElement && document.activeElement.id;
        target.innerHTML = html;
        if (focused && document.getElementById(focused)) { document.getElementById(focused).focus(); }
        var state = target.querySelector("#stato .badge");
        if (announce && state) { announce.textContent = "Stato aggiornato: " + state.textContent; }
      }).catch(function () { /* the next event tries again */ }).finally(function () { pending = false; });
    }
    source.addEventListener("change", refresh);
    source.addEventListener("ready", function () { root.dataset.live = "ready"; refresh(); });
  }

  function sortableTables() {
    document.querySelectorAll("table[data-sortable] .ordina").forEach(function (button) {
      button.addEventListener("click", function () {
        var table = button.closest("table");
        var col = Number(button.dataset.col);
        var asc = button.closest("th").getAttribute("aria-sort") !== "ascending";
        table.querySelectorAll("th").forEach(function (th) { th.removeAttribute("aria-sort"); });
        button.closest("th").setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[col].textContent, y = b.cells[col].textContent;
          var nx = Number(x), ny = Number(y);
          var c = (x !== "" && y !== "" && !isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y, "it");
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { liveInstance(); sortableTables(); });
})();
