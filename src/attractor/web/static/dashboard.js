// attractor dashboard: live updates from /api/stream (server-sent events) and the actions.
// Every value on the page is rendered (and escaped) by the server; this script only swaps the
// server's HTML in, and sends actions as POST requests with the token in a header.
(function () {
  "use strict";
  const token = document.querySelector('meta[name="attractor-token"]').content;
  const body = document.body;
  const content = document.getElementById("content");
  const live = document.getElementById("live");
  const toast = document.getElementById("toast");
  let refreshing = false;
  let again = false;
  let seen = 0;

  function fragmentUrl() {
    const url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    return url.toString();
  }

  function busyTyping() {
    const el = document.activeElement;
    return el && content.contains(el) && el.tagName === "INPUT" && el.value !== "";
  }

  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      do {
        again = false;
        const response = await fetch(fragmentUrl(), { headers: { "X-Attractor-Token": token }, cache: "no-store" });
        if (!response.ok) break;
        const html = await response.text();
        if (busyTyping()) { setTimeout(refresh, 1000); break; }
        content.innerHTML = html;
        body.dataset.refreshed = String(seen);
      } while (again);
    } catch (err) {
      // the server is restarting or gone: the stream's reconnect brings the next refresh
    } finally {
      refreshing = false;
    }
  }

  let cursor = body.dataset.cursor || "";
  let retryIn = 1000;

  // The browser reconnects a dropped stream by itself, sending the last id; when the server
  // answered with an error instead (it restarted with another token, or was down too long),
  // the stream is closed for good and this opens a new one after the last id seen, with backoff.
  function connect() {
    if (!window.EventSource || body.dataset.stream === "") return;
    const url = new URL("/api/stream", window.location.origin);
    if (body.dataset.stream && body.dataset.stream !== "*") url.searchParams.set("run", body.dataset.stream);
    if (cursor) url.searchParams.set("after", cursor);
    const source = new EventSource(url.toString());
    source.onopen = function () { live.textContent = "live"; live.className = "live on"; retryIn = 1000; };
    source.onerror = function () {
      live.textContent = "reconnecting"; live.className = "live off";
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(checkThenConnect, retryIn);
        retryIn = Math.min(retryIn * 2, 30000);
      }
    };
    source.addEventListener("run-event", function (message) {
      seen += 1;
      cursor = message.lastEventId;
      body.dataset.lastEventId = message.lastEventId;
      body.dataset.eventsSeen = String(seen);
      refresh();
    });
  }

  async function checkThenConnect() {
    try {
      const response = await fetch(fragmentUrl(), { headers: { "X-Attractor-Token": token }, cache: "no-store" });
      if (response.status === 401) {
        live.textContent = "token changed: open the URL the dashboard printed";
        setTimeout(checkThenConnect, 30000);
        return;
      }
    } catch (err) {
      // still down: the stream's own error brings the next try
    }
    connect();
  }

  function say(text, bad) {
    toast.textContent = text;
    toast.className = bad ? "show bad" : "show";
    clearTimeout(say.timer);
    say.timer = setTimeout(function () { toast.className = ""; }, 6000);
  }

  async function act(run, action, fields) {
    const response = await fetch("/api/runs/" + encodeURIComponent(run) + "/actions/" + action, {
      method: "POST",
      headers: { "X-Attractor-Token": token, "Content-Type": "application/json" },
      body: JSON.stringify(fields),
    });
    let data = {};
    try { data = await response.json(); } catch (err) { data = { error: response.statusText }; }
    if (!response.ok) { say(action + ": " + (data.error || response.status), true); return; }
    say((data.lines && data.lines.join(" · ")) || action + ": done", false);
    refresh();
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-action]");
    if (button) {
      event.preventDefault();
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      const fields = {};
      for (const key of ["node", "reply", "role", "name"]) if (button.dataset[key]) fields[key] = button.dataset[key];
      act(button.dataset.run, button.dataset.action, fields);
      return;
    }
    const copy = event.target.closest("button[data-copy]");
    if (copy) {
      event.preventDefault();
      const text = copy.dataset.copy;
      if (navigator.clipboard) navigator.clipboard.writeText(text).then(function () { say("copied: " + text); });
    }
  });

  document.addEventListener("submit", function (event) {
    const form = event.target.closest("form.send");
    if (!form) return;
    event.preventDefault();
    const input = form.querySelector("input[name=text]");
    const text = input.value;
    input.value = "";
    act(form.dataset.run, "send", { node: form.dataset.node, text: text });
  });

  connect();
  setInterval(function () { if (!document.hidden) refresh(); }, 5000);  // heartbeat ages
})();
