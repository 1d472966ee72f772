// The operators' desk: the queue, the conversations you hold, who is online.
// One WebSocket (/socket) carries JSON both ways (docs/desk.md).  What
// clients and other operators wrote is only ever inserted with
// textContent, with controls and bidi characters shown as escapes.
"use strict";

(function () {
  const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
  const visible = (text) => String(text).replace(UNSAFE, (c) => {
    const code = c.charCodeAt(0);
    return code < 0x100 ? "\\x" + code.toString(16).padStart(2, "0")
      : "\\u" + code.toString(16).padStart(4, "0");
  });
  const SESSION_ENDED = 4001;
  const CANNED = /^\/([a-z0-9_-]{1,32})$/i;

  const body = document.body;
  const status = document.getElementById("status");
  const meShown = document.getElementById("me");
  const problem = document.getElementById("problem");
  const queue = document.getElementById("queue");
  const queueCount = document.getElementById("queue-count");
  const queueEmpty = document.getElementById("queue-empty");
  const online = document.getElementById("online");
  const heldCount = document.getElementById("held-count");
  const noneHeld = document.getElementById("none-held");
  const conversations = document.getElementById("conversations");
  const template = document.getElementById("conversation-template");

  let socket = null;
  let me = null;
  let hold = 0;
  let canned = new Map();
  let retry = 1000;
  let problemTimer = null;
  // The banner holds while you hold this many conversations or more (the
  // hold limit's problem); null: it was said of a moment, and fades.
  let problemWhileHolding = null;
  let leaving = false; // going to the login page: a socket closing is no news
  // Conversations shown here, by key: {element, entry, over}.
  const shown = new Map();

  function element(tag, className, text) {
    const made = document.createElement(tag);
    if (className) made.className = className;
    if (text !== undefined) made.textContent = visible(text);
    return made;
  }

  function setState(state, text) {
    body.dataset.state = state;
    status.textContent = text;
  }

  function complain(text, whileHolding) {
    problem.textContent = visible(text);
    problem.hidden = false;
    clearTimeout(problemTimer);
    problemWhileHolding = whileHolding ?? null;
    if (problemWhileHolding === null) {
      problemTimer = setTimeout(clearProblem, 8000);
    }
  }

  function clearProblem() {
    clearTimeout(problemTimer);
    problem.hidden = true;
    problemWhileHolding = null;
  }

  // How long a line has waited, as a person says it.
  function duration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 60) return seconds + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + (seconds % 60) + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function tickWaits() {
    const now = performance.now();
    for (const wait of document.querySelectorAll("[data-waited]")) {
      const waited = Number(wait.dataset.waited) + (now - Number(wait.dataset.at)) / 1000;
      wait.textContent = "waiting " + duration(waited);
    }
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(message));
      return true;
    }
    complain("not connected: wait until the desk is back");
    return false;
  }

  function showDesk(desk) {
    const now = performance.now();
    queue.replaceChildren();
    let waiting = 0;
    for (const line of desk.lines) {
      const item = element("li", "line");
      item.dataset.entry = line.entry;
      const head = element("div", "line-head");
      head.append(element("span", "label", line.label));
      const wait = element("span", "wait");
      wait.dataset.waited = line.waited;
      wait.dataset.at = now;
      head.append(wait);
      item.append(head);
      const text = element("p", "text", line.excerpt);
      if (line.length > line.excerpt.length) {
        text.append(element("span", "more", "… (" + line.length.toLocaleString() + " characters)"));
      }
      item.append(text);
      if (line.holder === null) {
        waiting += 1;
        const take = element("button", "take", "Take");
        take.type = "button";
        take.addEventListener("click", () => send({ type: "take", entry: line.entry }));
        item.append(take);
      } else {
        const mine = me && line.holder.name === me.name;
        item.classList.add(mine ? "yours" : "held");
        item.append(element("p", "holder", mine ? "yours" : "held by " + line.holder.display));
      }
      queue.append(item);
    }
    queueCount.textContent = waiting ? "(" + waiting + ")" : "";
    queueEmpty.hidden = desk.lines.length > 0;
    const holding = new Map();
    for (const held of desk.held) {
      holding.set(held.holder.name, (holding.get(held.holder.name) || 0) + 1);
    }
    online.replaceChildren();
    for (const operator of desk.operators) {
      const count = holding.get(operator.name) || 0;
      const item = element("li", "operator", operator.display);
      if (me && operator.name === me.name) item.classList.add("me");
      item.append(element("span", "holds", count ? " holds " + count : ""));
      online.append(item);
    }
    tickWaits();
  }

  function saidItem(said) {
    const item = element("li", "said " + said.who);
    const who = said.who === "client" ? "client"
      : said.who === "operator" ? said.by
        : said.who === "bot" ? (said.by || "bot") : "desk";
    item.append(element("span", "who", who));
    item.append(element("span", "text", said.text));
    const at = new Date(said.at * 1000);
    const time = element("time", "at", at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
    time.dateTime = at.toISOString();
    item.append(time);
    return item;
  }

  function setTurn(view, entry, why) {
    view.entry = entry;
    const input = view.element.querySelector(".answer");
    const sendButton = view.element.querySelector(".send");
    const state = view.element.querySelector(".state");
    const yours = entry !== null && !view.over;
    input.disabled = view.over;
    sendButton.disabled = !yours;
    view.element.classList.toggle("yours", yours);
    if (view.over) return;
    state.textContent = yours ? "Your turn: answer the last line."
      : why ? visible(why) + ". Waiting for the client."
        : "Answered. Waiting for the client.";
  }

  function heldCounts() {
    let held = 0;
    for (const view of shown.values()) if (!view.over) held += 1;
    heldCount.textContent = hold ? "(" + held + " of " + hold + ")" : "";
    noneHeld.hidden = shown.size > 0;
    if (problemWhileHolding !== null && held < problemWhileHolding) clearProblem();
  }

  function expand(input, hint) {
    const match = CANNED.exec(input.value);
    if (!match) return false;
    const text = canned.get(match[1].toLowerCase());
    if (text === undefined) {
      hint.textContent = "No canned answer /" + visible(match[1]) + ". Known: " + knownCanned();
      hint.hidden = false;
      return true;
    }
    input.value = text;
    hint.hidden = true;
    return true;
  }

  function knownCanned() {
    return canned.size ? Array.from(canned.keys(), (k) => "/" + k).join(" ") : "none";
  }

  function showConversation(message) {
    let view = shown.get(message.conversation);
    if (view === undefined) {
      const made = template.content.firstElementChild.cloneNode(true);
      view = { element: made, entry: null, over: false };
      shown.set(message.conversation, view);
      wire(message.conversation, view);
      conversations.append(made);
    }
    view.over = false;
    view.element.classList.remove("over");
    view.element.querySelector(".label").textContent = visible(message.label);
    view.element.querySelector(".dismiss").hidden = true;
    for (const button of view.element.querySelectorAll(".handback, .end")) button.disabled = false;
    const history = view.element.querySelector(".history");
    history.replaceChildren(...message.history.map(saidItem));
    setTurn(view, message.entry, "");
    history.scrollTop = history.scrollHeight;
    heldCounts();
  }

  function wire(key, view) {
    const made = view.element;
    const form = made.querySelector(".answer-form");
    const input = made.querySelector(".answer");
    const hint = made.querySelector(".canned-hint");
    input.addEventListener("keydown", (event) => {
      if (event.key === "Tab" && CANNED.test(input.value)) {
        event.preventDefault();
        expand(input, hint);
      }
    });
    input.addEventListener("input", () => {
      if (input.value.startsWith("/") && !input.value.startsWith("//")) {
        const start = input.value.slice(1).toLowerCase();
        const matches = Array.from(canned.keys()).filter((k) => k.startsWith(start));
        hint.textContent = matches.length
          ? "Tab or Enter: " + matches.map((k) => "/" + k).join(" ")
          : "No canned answer starts so. Known: " + knownCanned() + " (// sends a /)";
        hint.hidden = false;
      } else {
        hint.hidden = true;
      }
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (input.value.startsWith("/") && !input.value.startsWith("//")) {
        expand(input, hint);
        return;
      }
      const text = input.value.startsWith("//") ? input.value.slice(1) : input.value;
      if (!text) return;
      if (view.entry === null) {
        // The turn rule: one answer per line, and none before the next.
        complain("nothing to answer yet: wait for the client's next line");
        return;
      }
      if (send({ type: "answer", entry: view.entry, text: text })) {
        input.value = "";
        setTurn(view, null, "");
      }
    });
    made.querySelector(".handback").addEventListener("click", () => send({ type: "handback", conversation: key }));
    made.querySelector(".end").addEventListener("click", () => send({ type: "end", conversation: key }));
    made.querySelector(".dismiss").addEventListener("click", () => {
      made.remove();
      shown.delete(key);
      heldCounts();
    });
  }

  function released(message) {
    const view = shown.get(message.conversation);
    if (view === undefined) return;
    if (message.why === "handed back to the queue") {
      view.element.remove();
      shown.delete(message.conversation);
      heldCounts();
      return;
    }
    view.over = true;
    view.element.classList.add("over");
    view.element.querySelector(".state").textContent = visible(message.why) + ".";
    view.element.querySelector(".dismiss").hidden = false;
    for (const button of view.element.querySelectorAll(".handback, .end")) button.disabled = true;
    setTurn(view, null, "");
    heldCounts();
  }

  function received(event) {
    const message = JSON.parse(event.data);
    if (message.type === "hello") {
      me = message.me;
      hold = message.hold;
      canned = new Map(message.canned.map((c) => [c.keyword, c.text]));
      meShown.textContent = visible(me.display);
      setState("ready", "Connected.");
      heldCounts();
    } else if (message.type === "desk") {
      showDesk(message);
    } else if (message.type === "conversation") {
      showConversation(message);
    } else if (message.type === "said") {
      const view = shown.get(message.said.conversation);
      if (view === undefined) return;
      const history = view.element.querySelector(".history");
      history.append(saidItem(message.said));
      history.scrollTop = history.scrollHeight;
    } else if (message.type === "turn") {
      const view = shown.get(message.conversation);
      if (view !== undefined) setTurn(view, message.entry, message.why);
    } else if (message.type === "released") {
      released(message);
    } else if (message.type === "problem") {
      complain(message.why, message.while_holding);
    }
  }

  function toLogin(why) {
    if (leaving) return;
    leaving = true;
    sessionStorage.setItem("desk-ended", why);
    location.replace("/login");
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(scheme + "//" + location.host + "/socket");
    socket.addEventListener("open", () => { retry = 1000; });
    socket.addEventListener("message", received);
    socket.addEventListener("close", async (event) => {
      socket = null;
      if (leaving) return;
      if (event.code === SESSION_ENDED) {
        toLogin(event.reason ? event.reason.charAt(0).toUpperCase() + event.reason.slice(1) + "." : "Your session is over.");
        return;
      }
      setState("lost", "The connection to the desk was lost; trying again…");
      try {
        const me = await fetch("/api/me", { credentials: "same-origin" });
        if (me.status === 401) {
          toLogin("Your session is over: log in again.");
          return;
        }
      } catch (e) {
        // the server is away: try again later
      }
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    });
  }

  addEventListener("pagehide", () => { leaving = true; });
  document.getElementById("logout").addEventListener("click", async () => {
    try {
      await fetch("/logout", { method: "POST", credentials: "same-origin" });
    } finally {
      toLogin("You logged out.");
    }
  });

  setInterval(tickWaits, 1000);
  connect();
})();
