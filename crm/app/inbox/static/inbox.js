// The inbox's only script (served by the app; no framework, no build step).
// - polls /inbox/poll every few seconds: the conversation list, new messages and notes of the
//   open thread, delivery ticks, and the reply box / contact panel when their state changed;
// - alerts (sound, browser notification, title) when someone new asks for a person;
// - the template picker: shows the chosen template's parameters and a live preview;
// - shows times in the browser's time zone.
(function () {
  "use strict";
  var body = document.body;
  var POLL_MS = 3000;
  var pollUrl = body.dataset.poll;
  var listHtml = null;
  var knownWaiting = null;
  var baseTitle = document.title;

  function localize(root) {
    var today = new Date().toDateString();
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) return;
      var hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      el.textContent = d.toDateString() === today ? hm : d.toLocaleDateString([], { day: "numeric", month: "short" }) + " " + hm;
      el.title = d.toLocaleString();
    });
  }

  function fragment(html) {
    var t = document.createElement("template");
    t.innerHTML = html;
    return t.content;
  }

  // -- alerts for new handovers -------------------------------------------------------------
  var audio = null;
  function beep() {
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      [0, 0.18].forEach(function (delay, i) {
        var osc = audio.createOscillator(), gain = audio.createGain();
        osc.frequency.value = i ? 1175 : 880;
        gain.gain.setValueAtTime(0.0001, audio.currentTime + delay);
        gain.gain.exponentialRampToValueAtTime(0.2, audio.currentTime + delay + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, audio.currentTime + delay + 0.16);
        osc.connect(gain).connect(audio.destination);
        osc.start(audio.currentTime + delay);
        osc.stop(audio.currentTime + delay + 0.17);
      });
    } catch (e) { /* no audio: the notification and the title still tell */ }
  }

  function alertNew(ids) {
    body.dataset.alerted = String((Number(body.dataset.alerted) || 0) + ids.length);
    beep();
    if (window.Notification && Notification.permission === "granted") {
      var n = new Notification("Someone is waiting for a person", {
        body: ids.length === 1 ? "A conversation is waiting in the inbox." : ids.length + " conversations are waiting.",
        tag: "crm-handover",
      });
      n.onclick = function () { window.focus(); location.href = "/inbox/c/" + ids[0]; };
    }
  }

  function showWaiting(ids) {
    var badge = document.getElementById("waiting-count");
    if (badge) {
      badge.hidden = ids.length === 0;
      badge.textContent = ids.length;
    }
    document.title = (ids.length ? "(" + ids.length + ") " : "") + baseTitle;
    if (knownWaiting !== null) {
      var fresh = ids.filter(function (id) { return knownWaiting.indexOf(id) < 0; });
      if (fresh.length) alertNew(fresh);
    }
    knownWaiting = ids;
  }

  var alertsButton = document.getElementById("alerts");
  if (alertsButton && window.Notification && Notification.permission === "default") {
    alertsButton.hidden = false;
    alertsButton.addEventListener("click", function () {
      beep(); // also unlocks sound, which browsers allow only after a click
      Notification.requestPermission().then(function () { alertsButton.hidden = true; });
    });
  }

  // -- the open thread --------------------------------------------------------------------------
  var thread = document.getElementById("thread");
  function nearBottom() {
    return !thread || thread.scrollHeight - thread.scrollTop - thread.clientHeight < 80;
  }
  function toBottom() { if (thread) thread.scrollTop = thread.scrollHeight; }

  function appendItems(html) {
    var stick = nearBottom();
    var items = fragment(html);
    Array.prototype.slice.call(items.children).forEach(function (li) {
      var key = li.dataset.mid ? '[data-mid="' + li.dataset.mid + '"]' : '[data-note="' + li.dataset.note + '"]';
      if (!thread.querySelector(key)) {
        localize(li);
        thread.appendChild(li);
      }
    });
    if (stick) toBottom();
  }

  function replacePanel(id, html) {
    var el = document.getElementById(id);
    if (!el || html === undefined) return;
    var draft = el.querySelector("textarea");
    var kept = draft ? draft.value : null;
    var focused = draft && document.activeElement === draft;
    el.innerHTML = html;
    localize(el);
    var again = el.querySelector("textarea");
    if (again && kept) again.value = kept;
    if (again && focused) again.focus();
    wireReply();
  }

  // -- polling ---------------------------------------------------------------------------------
  function pollOnce() {
    var params = new URLSearchParams();
    ["filter", "q", "limit"].forEach(function (k) { if (body.dataset[k]) params.set(k, body.dataset[k]); });
    var live = body.dataset.contact && !body.dataset.frozen;
    if (live) {
      params.set("c", body.dataset.contact);
      params.set("after", body.dataset.after || "0");
      params.set("state", body.dataset.state || "");
      params.set("t", body.dataset.t || "");
    }
    return fetch(pollUrl + "?" + params.toString(), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); throw new Error("signed out"); }
        if (!r.ok) throw new Error("poll " + r.status);
        return r.json();
      })
      .then(function (data) {
        var list = document.getElementById("conversations");
        if (list && data.list !== listHtml) {
          list.innerHTML = data.list;
          localize(list);
          listHtml = data.list;
        }
        showWaiting(data.waiting || []);
        var t = data.thread;
        if (live && t && thread) {
          if (t.html) appendItems(t.html);
          body.dataset.after = t.after;
          body.dataset.t = data.now;
          Object.keys(t.ticks || {}).forEach(function (id) {
            var el = thread.querySelector('[data-mid="' + id + '"] .ticks');
            if (el && el.innerHTML !== t.ticks[id]) el.innerHTML = t.ticks[id];
          });
          if (t.state !== body.dataset.state) {
            body.dataset.state = t.state;
            replacePanel("reply", t.reply);
            replacePanel("contact-pane", t.contact);
          }
        }
        body.dataset.polled = String((Number(body.dataset.polled) || 0) + 1);
      })
      .catch(function () { /* the next poll tries again */ });
  }

  function loop() {
    pollOnce().then(function () { setTimeout(loop, document.hidden ? POLL_MS * 3 : POLL_MS); });
  }

  // -- the reply box ---------------------------------------------------------------------------
  function wireReply() {
    var text = document.getElementById("reply-text");
    if (text && !text.dataset.wired) {
      text.dataset.wired = "1";
      text.addEventListener("keydown", function (e) {
        if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); text.form.requestSubmit(); }
      });
    }
    var select = document.getElementById("template-select");
    if (select && !select.dataset.wired) {
      select.dataset.wired = "1";
      var form = select.form;
      var show = function () {
        form.querySelectorAll("fieldset.template-params").forEach(function (fs) {
          var on = fs.dataset.template === select.value;
          fs.hidden = !on;
          fs.disabled = !on;
        });
        preview();
      };
      var preview = function () {
        form.querySelectorAll("fieldset.template-params:not([disabled])").forEach(function (fs) {
          fs.querySelectorAll(".preview [data-component]").forEach(function (part) {
            var text = part.dataset.text;
            fs.querySelectorAll('input[data-component="' + part.dataset.component + '"]').forEach(function (input) {
              if (input.value) text = text.split("{{" + input.dataset.param + "}}").join(input.value);
            });
            part.textContent = text;
          });
        });
      };
      select.addEventListener("change", show);
      form.addEventListener("input", preview);
      preview();
    }
  }

  // double submits: one click, one send
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (form.dataset.sent) { e.preventDefault(); return; }
    form.dataset.sent = "1";
    setTimeout(function () { delete form.dataset.sent; }, 3000);
  });

  // flashed notices fade after a few seconds (errors stay: they sit in the page)
  document.querySelectorAll(".flashes .alert").forEach(function (el) {
    setTimeout(function () { el.remove(); }, 5000);
  });
  localize(document);
  wireReply();
  toBottom();
  if (pollUrl && !body.classList.contains("login")) {
    pollOnce().then(function () { setTimeout(loop, POLL_MS); });
  }
})();
