// The console's only script: no build step. Live updates of an instance page (server-sent events),
// sortable tables, and the fonts of Bootstrap Italia (Titillium Web, Roboto Mono, Lora: the Designers Italia look).
(function () {
  "use strict";
  var me = document.currentScript;
  if (me && me.dataset.vendor) { window.__PUBLIC_PATH__ = me.dataset.vendor + "/fonts"; }

  function liveInstance() {
    var root = document.getElementById("istanza");
    if (!root || !window.EventSource) { return; }
    var target = document.getElementById("stato-istanza");
    var announce = document.getElementById("annuncio");
    var notice = document.getElementById("aggiornamento");
    // One fetch at a time; a change announced while one is on its way (a load that finishes meanwhile) is fetched
    // again after it: the answer on its way may predate that change, and nothing else would come to correct it.
    var pending = false, again = false;
    function refresh() {
      if (pending) { again = true; return; }
      pending = true;
      again = false;
      fetch(root.dataset.fragment, { credentials: "same-origin" }).then(function (r) {
        if (!r.ok) { throw new Error(r.status); }
        return r.text();
      }).then(function (html) {
        var focused = document.activeElement && document.activeElement.id;
        target.innerHTML = html;
        if (focused && document.getElementById(focused)) { document.getElementById(focused).focus(); }
        var state = target.querySelector("#stato .badge");
        if (announce && state) { announce.textContent = "Stato aggiornato: " + state.textContent; }
      }).catch(function () { /* the next event tries again */ }).finally(function () {
        pending = false;
        if (again) { refresh(); }
      });
    }
    // The browser reconnects a stream by itself after a network error, but not after an answer that is not the
    // stream (a 503 while PostgreSQL is down, a proxy's 502 while the console restarts, the login page once the
    // session ended): the page would stay still with nothing to say so. Then it tries again here, 2 s doubling to
    // 60 s, and says so on the page; `ready` refetches the state, covering what changed meanwhile.
    var delay = 2000;
    function connect() {
      var source = new EventSource(root.dataset.events);
      source.addEventListener("change", refresh);
      source.addEventListener("ready", function () {
        delay = 2000;
        root.dataset.live = "ready";
        if (notice) { notice.hidden = true; }
        refresh();
      });
      // The server ends a stream whose session no longer reads the instance (a logout, a disable, a new password, a
      // lost ente: at once; or PostgreSQL down at a keep-alive) and says so first: the page asks why at once rather
      // than after the browser's own reconnection delay.
      source.addEventListener("ended", function () { source.close(); stopped(); });
      source.addEventListener("error", function () {
        if (source.readyState !== EventSource.CLOSED) { root.dataset.live = "reconnecting"; return; }
        stopped();
      });
      function stopped() {
        // Why it was refused: a session that ended (the login page) or an instance no longer readable (404) is not
        // tried again; anything else (503, 502, the network) is.
        // Said apart: a session that ended (log in again) and an instance this user no longer reads (404: an ente
        // taken away, or the instance gone; logging in again would not help).
        fetch(root.dataset.fragment, { credentials: "same-origin", redirect: "manual" }).then(function (r) {
          if (r.type === "opaqueredirect" || r.status === 401) { return "session"; }
          return r.status === 404 ? "instance" : "";
        }, function () { return ""; }).then(function (why) {
          var ended = why !== "";
          root.dataset.live = ended ? "ended" : "closed";
          if (notice) {
            notice.hidden = false;
            if (ended) {
              var again = document.createElement("a");
              if (why === "session") {
                notice.textContent = "Aggiornamento automatico terminato: la sessione è scaduta o chiusa. ";
                again.href = "/login?next=" + encodeURIComponent(location.pathname);
                again.textContent = "Accedi di nuovo";
              } else {
                notice.textContent = "Aggiornamento automatico terminato: questa istanza non è più accessibile " +
                  "con le sue autorizzazioni, o non esiste più. ";
                again.href = "/istanze";
                again.textContent = "Torna all'elenco delle istanze";
              }
              notice.appendChild(again);
            } else {
              notice.textContent = "Aggiornamento automatico interrotto: nuovo tentativo tra " +
                Math.round(delay / 1000) + " secondi. Lo stato mostrato potrebbe non essere aggiornato.";
            }
          }
          if (!ended) {
            setTimeout(connect, delay);
            delay = Math.min(delay * 2, 60000);
          }
        });
      }
    }
    connect();
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

  // ---- Invia a Sistema TS: the box of services/ts_gateway/sealing.py, made with WebCrypto.
  // b"TSG2" | u8 key-id length | key id | u16 wrapped-key length | RSA-OAEP(SHA-256) wrapped AES-256 key |
  // 12-byte nonce | AES-GCM ciphertext+tag, with magic + key id as associated data; base64.
  function concat(parts) {
    var size = parts.reduce(function (n, p) { return n + p.length; }, 0);
    var out = new Uint8Array(size), at = 0;
    parts.forEach(function (p) { out.set(p, at); at += p.length; });
    return out;
  }
  function toBase64(bytes) {
    var s = "";
    for (var i = 0; i < bytes.length; i += 0x8000) { s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000)); }
    return btoa(s);
  }
  async function sealTs(publicKeyPem, credentials) {
    var b64 = publicKeyPem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
    var der = Uint8Array.from(atob(b64), function (c) { return c.charCodeAt(0); });
    var digest = new Uint8Array(await crypto.subtle.digest("SHA-256", der));
    var kid = Array.prototype.map.call(digest.subarray(0, 8), function (b) { return b.toString(16).padStart(2, "0"); }).join("");
    var publicKey = await crypto.subtle.importKey("spki", der, { name: "RSA-OAEP", hash: "SHA-256" }, false, ["encrypt"]);
    var contentKey = await crypto.subtle.generateKey({ name: "AES-GCM", length: 256 }, true, ["encrypt"]);
    var rawKey = new Uint8Array(await crypto.subtle.exportKey("raw", contentKey));
    var nonce = crypto.getRandomValues(new Uint8Array(12));
    var kidBytes = new TextEncoder().encode(kid);
    var header = concat([new TextEncoder().encode("TSG2"), new Uint8Array([kidBytes.length]), kidBytes]);
    var plaintext = new TextEncoder().encode(JSON.stringify(credentials));
    var ciphertext = new Uint8Array(await crypto.subtle.encrypt(
      { name: "AES-GCM", iv: nonce, additionalData: header, tagLength: 128 }, contentKey, plaintext));
    var wrapped = new Uint8Array(await crypto.subtle.encrypt({ name: "RSA-OAEP" }, publicKey, rawKey));
    rawKey.fill(0);
    var length = new Uint8Array([wrapped.length >> 8, wrapped.length & 0xff]);
    return toBase64(concat([header, length, wrapped, nonce, ciphertext]));
  }
  window.flowsSealTs = sealTs;

  function tsSendForm() {
    var form = document.getElementById("invia-ts");
    if (!form) { return; }
    var fields = ["ts-cf", "ts-utente", "ts-password", "ts-pincode"].map(function (id) { return document.getElementById(id); });
    var error = document.getElementById("ts-errore");
    form.addEventListener("submit", function (event) {
      if (document.getElementById("sigillo").value) { return; }  // sealed: this is the real submit
      event.preventDefault();
      if (fields.some(function (f) { return !f.value.trim(); })) {
        error.textContent = "Compili tutti i campi delle credenziali.";
        error.classList.remove("d-none");
        fields.filter(function (f) { return !f.value.trim(); })[0].focus();
        return;
      }
      sealTs(form.dataset.publicKey, {
        user: fields[1].value, password: fields[2].value, pincode: fields[3].value,
        cf_proprietario: fields[0].value.trim().toUpperCase()
      }).then(function (sealed) {
        fields.forEach(function (f) { f.value = ""; });
        document.getElementById("sigillo").value = sealed;
        form.submit();
      }).catch(function () {
        error.textContent = "Il browser non ha potuto cifrare le credenziali: nulla è stato inviato. Ricarichi la " +
          "pagina e riprovi; se il problema continua, usi un browser aggiornato o avvisi l'esercizio.";
        error.classList.remove("d-none");
      });
    });
  }

  // ---- The upload of an onboarding document: the facts to declare are those of the chosen document type. Without
  // this every type's fieldset is on the page (only the chosen type's is read); with it the others are hidden and
  // disabled (a disabled fieldset's fields are not sent), shown again when the type changes: no reload, so no
  // change of context while choosing (WCAG 3.2.2).
  function documentFacts() {
    var select = document.getElementById("tipo-doc");
    var sets = document.querySelectorAll("#dati-documento fieldset[data-tipo]");
    var box = document.getElementById("dati-documento");
    if (!select || !box) { return; }
    function show() {
      var any = false;
      sets.forEach(function (set) {
        var mine = set.dataset.tipo === select.value;
        set.hidden = !mine;
        set.disabled = !mine;
        any = any || mine;
      });
      box.hidden = !any;
    }
    select.addEventListener("change", show);
    show();
  }

  // The bundle declares its fonts only when asked (loadFonts adds their @font-face rules, below __PUBLIC_PATH__):
  // without this the pages fall back to the system's sans-serif. The bundle runs after this file (both deferred,
  // in order), before DOMContentLoaded.
  function fonts() {
    if (window.bootstrap && typeof window.bootstrap.loadFonts === "function") { window.bootstrap.loadFonts(); }
  }

  document.addEventListener("DOMContentLoaded", function () { fonts(); liveInstance(); sortableTables(); tsSendForm(); documentFacts(); });
})();
