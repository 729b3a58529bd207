// The flow simulator's only script (served by the app; no framework, no build step).
// Draws the test contact's conversation as WhatsApp shows it (text, reply buttons, list
// messages, media and templates as cards), sends what the tester types or presses, and polls
// /simulator/poll every 2 s (expiry notices, messages queued by others). Everything the server
// sends is put on the page as text (textContent), never as HTML.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var root = document.getElementById("simulator");
  if (!root) return;
  var base = root.dataset.base.replace(/\/$/, "");
  var csrf = root.dataset.csrf;
  var chat = document.getElementById("chat");
  var phone = chat.closest(".phone");
  var errorBox = document.getElementById("sim-error");
  var sheet = document.getElementById("sheet");
  var shown = null; // the last conversation drawn (JSON)
  var shownContact; // its contact's id
  var current = null;
  var busy = 0;
  var clockSkew = 0; // server time - browser time, in ms

  // -- small DOM helpers -------------------------------------------------------------------
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // WhatsApp's formatting: *bold*, _italic_, ~strike~, ```mono``` (text nodes only)
  var FORMAT = /```([\s\S]+?)```|\*([^*\n]+)\*|_([^_\n]+)_|~([^~\n]+)~/g;
  function formatted(text) {
    var out = document.createDocumentFragment();
    var last = 0, m;
    text = String(text || "");
    FORMAT.lastIndex = 0;
    while ((m = FORMAT.exec(text)) !== null) {
      if (m.index > last) out.appendChild(document.createTextNode(text.slice(last, m.index)));
      if (m[1] !== undefined) out.appendChild(el("code", null, m[1]));
      else if (m[2] !== undefined) out.appendChild(el("strong", null, m[2]));
      else if (m[3] !== undefined) out.appendChild(el("em", null, m[3]));
      else out.appendChild(el("s", null, m[4]));
      last = FORMAT.lastIndex;
    }
    if (last < text.length) out.appendChild(document.createTextNode(text.slice(last)));
    return out;
  }

  function clock(iso) {
    var d = new Date(iso);
    return isNaN(d) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function showError(message) {
    errorBox.hidden = !message;
    errorBox.textContent = message || "";
  }

  // -- talking to the server ---------------------------------------------------------------
  function request(path, body) {
    var options = { credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      options.method = "POST";
      options.headers["Content-Type"] = "application/json";
      options.headers["X-CSRFToken"] = csrf;
      options.body = JSON.stringify(body);
    }
    return fetch(base + path, options).then(function (r) {
      if (r.status === 401) {
        location.href = "/login?next=" + encodeURIComponent(location.pathname);
        throw new Error("Signed out");
      }
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (!r.ok) throw new Error(data.error || "The server answered " + r.status);
        return data;
      });
    });
  }

  function act(path, body) {
    busy += 1;
    phone.classList.add("busy");
    showError(null);
    return request(path, body)
      .then(draw)
      .catch(function (e) { showError(e.message); })
      .then(function () {
        busy -= 1;
        if (!busy) phone.classList.remove("busy");
        root.dataset.actions = String((Number(root.dataset.actions) || 0) + 1);
      });
  }

  // -- one message -------------------------------------------------------------------------
  var MEDIA = { image: "🖼️", video: "🎬", audio: "🎵", document: "📄", sticker: "🏷️" };

  function card(icon, label, detail) {
    var c = el("div", "card");
    c.appendChild(el("span", "icon", icon));
    var t = el("div");
    t.appendChild(el("div", "label", label));
    if (detail) t.appendChild(el("div", "detail", detail));
    c.appendChild(t);
    return c;
  }

  function templateDetail(template) {
    var parts = [];
    (template.components || []).forEach(function (comp) {
      var values = (comp.parameters || []).map(function (p) {
        return p.text || (p[p.type] && (p[p.type].link || p[p.type].id || p[p.type].fallback_value)) || p.type;
      });
      if (values.length) parts.push(comp.type + (comp.index !== undefined ? " " + comp.index : "") + ": " + values.join(", "));
    });
    return parts.join(" · ");
  }

  // The bubble's content for a message object as WhatsApp sends or receives it.
  function content(m, bubble, wrap) {
    var p = m.payload || {};
    var type = p.type;
    if (m.direction === "in") {
      if (type === "interactive") {
        var inter = p.interactive || {};
        var reply = inter[inter.type] || {};
        if (p.context) bubble.appendChild(el("div", "quoted", "↩ " + (m.quoted || "a message")));
        bubble.appendChild(el("div", "body", reply.title || m.text || ""));
        if (reply.description) bubble.appendChild(el("div", "footer", reply.description));
        return;
      }
      if (type === "text") { bubble.appendChild(el("div", "body")).appendChild(formatted((p.text || {}).body)); return; }
      bubble.appendChild(el("div", "body", m.text || "[" + type + "]"));
      return;
    }
    if (type === "text") {
      bubble.appendChild(el("div", "body")).appendChild(formatted((p.text || {}).body));
    } else if (type === "interactive") {
      var i = p.interactive || {};
      if (i.header) {
        if (i.header.type === "text") bubble.appendChild(el("div", "header", i.header.text));
        else bubble.appendChild(card(MEDIA[i.header.type] || "📎", i.header.type + " header"));
      }
      bubble.appendChild(el("div", "body")).appendChild(formatted((i.body || {}).text));
      if (i.footer) bubble.appendChild(el("div", "footer", i.footer.text));
      var action = i.action || {};
      if (i.type === "button") {
        var buttons = el("div", "buttons");
        (action.buttons || []).forEach(function (b) {
          var reply = b.reply || {};
          var btn = el("button", "reply-button", reply.title);
          btn.type = "button";
          btn.dataset.replyId = reply.id;
          btn.dataset.messageId = m.id;
          btn.addEventListener("click", function () { press(m.id, reply.id); });
          buttons.appendChild(btn);
        });
        wrap.appendChild(buttons);
      } else if (i.type === "list") {
        wrap.classList.add("has-list");
        var open = el("button", "list-open", "☰ " + (action.button || "Options"));
        open.type = "button";
        open.dataset.messageId = m.id;
        open.addEventListener("click", function () { openList(m.id, action); });
        wrap.appendChild(open);
      } else {
        bubble.appendChild(card("🧩", "Interactive message (" + i.type + ")"));
      }
    } else if (MEDIA[type]) {
      var media = p[type] || {};
      bubble.appendChild(card(MEDIA[type], type.charAt(0).toUpperCase() + type.slice(1) +
                              (media.filename ? ": " + media.filename : ""), media.link || (media.id ? "media id " + media.id : "")));
      if (media.caption) bubble.appendChild(el("div", "body")).appendChild(formatted(media.caption));
    } else if (type === "template") {
      var t = p.template || {};
      bubble.appendChild(card("📋", "Template " + t.name + " (" + ((t.language || {}).code || "") + ")", templateDetail(t)));
    } else if (type === "location") {
      var loc = p.location || {};
      bubble.appendChild(card("📍", loc.name || loc.address || "Location", loc.latitude + ", " + loc.longitude));
    } else if (type === "contacts") {
      var names = (p.contacts || []).map(function (c) { return (c.name || {}).formatted_name; }).filter(Boolean);
      bubble.appendChild(card("👤", "Contact card", names.join(", ")));
    } else {
      bubble.appendChild(card("❔", "[" + type + "]", m.text));
    }
  }

  var ORIGINS = { expiry: "expiry notice", operator: "operator", system: "system", consent: "consent", football: "football" };

  function message(m, byWamid) {
    var wrap = el("div", "wa " + (m.direction === "in" ? "me" : "bot"));
    wrap.dataset.mid = m.id;
    wrap.dataset.type = m.type;
    if (m.direction === "in" && m.payload && m.payload.context) {
      m.quoted = byWamid[m.payload.context.id] || null;
    }
    var bubble = el("div", "bubble");
    wrap.appendChild(bubble);
    content(m, bubble, wrap);
    var meta = el("span", "meta");
    if (m.direction === "out" && ORIGINS[m.origin]) meta.appendChild(el("span", "tag", ORIGINS[m.origin]));
    meta.appendChild(document.createTextNode(clock(m.at)));
    if (m.direction === "out" && (m.status === "queued" || m.status === "sending")) meta.appendChild(document.createTextNode(" 🕓"));
    bubble.appendChild(meta);
    if (m.status === "failed") bubble.appendChild(el("div", "failed", "not sent: " + (m.error || "failed")));
    return wrap;
  }

  // -- the list sheet ----------------------------------------------------------------------
  function openList(messageId, action) {
    var rows = document.getElementById("sheet-rows");
    rows.textContent = "";
    document.getElementById("sheet-title").textContent = action.button || "Options";
    (action.sections || []).forEach(function (section) {
      if (section.title) rows.appendChild(el("div", "section-title", section.title));
      (section.rows || []).forEach(function (row) {
        var b = el("button", "list-row");
        b.type = "button";
        b.dataset.replyId = row.id;
        var texts = el("span", "texts");
        texts.appendChild(el("span", "title", row.title));
        if (row.description) texts.appendChild(el("small", null, row.description));
        b.appendChild(texts);
        b.appendChild(el("span", "radio"));
        b.addEventListener("click", function () { closeList(); press(messageId, row.id); });
        rows.appendChild(b);
      });
    });
    sheet.hidden = false;
  }
  function closeList() { sheet.hidden = true; }
  document.getElementById("sheet-close").addEventListener("click", closeList);
  sheet.addEventListener("click", function (e) { if (e.target === sheet) closeList(); });
  document.addEventListener("keydown", function (e) { if (e.key === "Escape") closeList(); });

  // -- the side panel ----------------------------------------------------------------------
  function setText(id, text) { document.getElementById(id).textContent = text; }

  function expiresText() {
    var s = current && current.session;
    if (!s || !s.expires_at) return s && s.status === "handover" ? "never (a person answers)" : "–";
    var left = Math.round((new Date(s.expires_at) - (Date.now() + clockSkew)) / 1000);
    if (left <= 0) return "now (at the next cleanup run)";
    return "in " + Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0") + " (" + clock(s.expires_at) + ")";
  }

  function drawPanel(state) {
    var s = state.session;
    setText("session-flow", s ? s.flow : "–");
    setText("session-step", s ? (s.step || "–") : "–");
    var status = document.getElementById("session-status");
    status.textContent = "";
    if (s) {
      status.appendChild(el("span", "status " + s.status, s.status));
      if (s.end_reason) status.appendChild(document.createTextNode(" " + s.end_reason));
    } else status.textContent = "no session";
    setText("session-expires", expiresText());
    setText("vars", JSON.stringify(s ? s.variables : {}, null, 2));
    setText("fields", JSON.stringify(state.contact ? state.contact.fields : {}, null, 2));
    setText("sim-contact", state.contact ? state.contact.wa_id : "–");
    var path = document.getElementById("path");
    path.textContent = "";
    (state.sessions || []).forEach(function (run) {
      var li = el("li");
      li.dataset.session = run.id;
      li.appendChild(el("div", "run-head", "Session " + run.id + " · " + run.status + (run.end_reason ? " (" + run.end_reason + ")" : "")));
      var steps = el("div", "steps");
      var flow = null;
      (run.path || []).forEach(function (p, i) {
        if (p.flow !== flow) { steps.appendChild(el("span", "flow", p.flow)); flow = p.flow; }
        else steps.appendChild(el("span", "arrow", "→"));
        var step = el("span", "step", p.step);
        step.dataset.step = p.step;
        if (i === run.path.length - 1 && (run.status === "active" || run.status === "handover")) step.classList.add("now");
        steps.appendChild(step);
      });
      if (!(run.path || []).length) steps.appendChild(el("span", "arrow", "(no steps recorded)"));
      li.appendChild(steps);
      path.appendChild(li);
    });
    if (!(state.sessions || []).length) path.appendChild(el("li", "run-head", "No session yet."));
  }

  // -- the whole state ---------------------------------------------------------------------
  function draw(state) {
    current = state;
    if (state.now) clockSkew = new Date(state.now) - Date.now();
    var key = JSON.stringify([state.contact, state.messages, state.sessions]);
    drawPanel(state);
    if (key === shown) return;
    var contactId = state.contact ? state.contact.id : null;
    var stick = chat.scrollHeight - chat.scrollTop - chat.clientHeight < 80 || contactId !== shownContact;
    shown = key;
    shownContact = contactId;
    chat.textContent = "";
    if (!state.contact) {
      chat.appendChild(el("div", "empty", "Pick a flow and press Start, or type a message as a new test contact."));
    } else if (!state.messages.length) {
      chat.appendChild(el("div", "empty", "New test contact " + state.contact.wa_id + ". Say something."));
    }
    var byWamid = {};
    state.messages.forEach(function (m) {
      if (m.direction === "out" && m.wa_message_id) byWamid[m.wa_message_id] = m.text;
    });
    state.messages.forEach(function (m) { chat.appendChild(message(m, byWamid)); });
    setText("phone-status", state.session && state.session.status === "handover" ? "waiting for a person" : "simulator");
    chat.dataset.count = String(state.messages.length);
    if (stick) chat.scrollTop = chat.scrollHeight;
  }

  // -- what the tester does ----------------------------------------------------------------
  function press(messageId, replyId) { return act("/press", { message_id: messageId, reply_id: replyId }); }

  var input = document.getElementById("sim-text");
  document.getElementById("composer").addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value;
    if (!text.trim()) return;
    input.value = "";
    act("/send", { text: text }).then(function () { input.focus(); });
  });
  var select = document.getElementById("flow-select");
  function restart() { closeList(); return act("/reset", { flow: select.value }); }
  document.getElementById("start").addEventListener("click", restart);
  document.getElementById("reset").addEventListener("click", restart);

  // -- polling -----------------------------------------------------------------------------
  function poll() {
    var next = function () { setTimeout(poll, document.hidden ? POLL_MS * 3 : POLL_MS); };
    if (busy) { next(); return; }
    request("/poll")
      .then(function (state) { if (!busy) draw(state); root.dataset.polled = String((Number(root.dataset.polled) || 0) + 1); })
      .catch(function () { /* the next poll tries again */ })
      .then(next);
  }
  setInterval(function () { if (current) setText("session-expires", expiresText()); }, 1000);

  draw(JSON.parse(document.getElementById("sim-state").textContent));
  setTimeout(poll, POLL_MS);
})();
