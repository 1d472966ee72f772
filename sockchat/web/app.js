// sockchat's page: one WebSocket, one conversation, the line protocol of
// docs/protocol.md with one text message per line.  Peer text is only ever
// inserted with textContent, with controls and bidi characters shown as
// escapes, as the terminal client does.
"use strict";

(function () {
  const QUIT = "q";
  const NOTICE = /^!(info|error|bye) ([a-z0-9-]+): ([\s\S]*)$/;
  // C0 and C1 controls, DEL, line and paragraph separators, bidi controls:
  // the same set as sockchat/_core/render.py.
  const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
  const NAMED = { "\t": "\\t", "\n": "\\n", "\r": "\\r", "\u001b": "\\x1b" };

  const body = document.body;
  const log = document.getElementById("log");
  const status = document.getElementById("status");
  const form = document.getElementById("say");
  const input = document.getElementById("line");
  const send = document.getElementById("send");
  const quit = document.getElementById("quit");
  const reconnect = document.getElementById("reconnect");
  const why = document.getElementById("why");
  const traceToggle = document.getElementById("trace-toggle");
  const tracePanel = document.getElementById("trace");
  const traceLog = document.getElementById("trace-log");
  const traceClose = document.getElementById("trace-close");
  const ladder = document.getElementById("ladder");
  const ladderDrawing = document.getElementById("ladder-drawing");
  const ladderCountdown = document.getElementById("ladder-countdown");
  // Lines kept in the trace panel: the oldest go first.
  const TRACE_KEPT = 500;
  const CLOSE_NAMES = {
    1000: "normal closure",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1005: "no code was sent",
    1006: "closed with no Close frame",
    1007: "invalid data",
    1008: "policy violation",
    1011: "server error",
    1013: "try again later",
  };
  const encoder = new TextEncoder();
  // The ladder (twistd sockchat --trace): an SVG the server draws for this
  // conversation at a path only this page was told.  It is parsed as SVG,
  // and only these elements and attributes are kept: no script, link, style
  // or image can come in with it (and the page's policy allows none).
  const SVG_NS = "http://www.w3.org/2000/svg";
  const SVG_ELEMENTS = new Set(["svg", "title", "defs", "marker", "path", "line", "text", "rect"]);
  const SVG_ATTRIBUTES = new Set([
    "viewBox", "width", "height", "role", "font-family", "font-size", "font-weight",
    "font-style", "text-anchor", "fill", "stroke", "stroke-width", "stroke-dasharray",
    "opacity", "x", "y", "x1", "y1", "x2", "y2", "d", "id", "refX", "refY",
    "markerWidth", "markerHeight", "orient", "marker-end", "data-time-wait-ends", "data-now",
  ]);
  // Fetched again at most this often while trace lines come, and these many
  // milliseconds after the socket closed (the close's packets, the ss check).
  const LADDER_EVERY = 500;
  const LADDER_AFTER_CLOSE = [600, 1500, 3500];

  let socket = null;
  let opened = false; // the current socket was opened at least once
  let state = "connecting";
  let peer = "server"; // who answers: the server, or a partner in pair mode
  let anew = false; // a new conversation was asked for: mark where it starts
  let ladderPath = null; // where this conversation's ladder is drawn
  let ladderTimer = null; // a fetch of it is due
  let ladderEnds = null; // TIME_WAIT's end, in this page's clock (ms)
  let countdownTimer = null;

  function safeText(text) {
    return text.replace(UNSAFE, function (c) {
      if (NAMED[c]) return NAMED[c];
      const code = c.charCodeAt(0);
      return code < 0x100
        ? "\\x" + code.toString(16).padStart(2, "0")
        : "\\u" + code.toString(16).padStart(4, "0");
    });
  }

  function parse(line) {
    if (line.startsWith("!!")) return { answer: line.slice(1) };
    if (!line.startsWith("!")) return { answer: line };
    const m = NOTICE.exec(line);
    if (!m) return { kind: "info", code: "malformed", text: line.slice(1) };
    return { kind: m[1], code: m[2], text: m[3] };
  }

  function show(who, text, label) {
    const item = document.createElement("li");
    item.className = who;
    const tag = document.createElement("span");
    tag.className = "who";
    tag.textContent = label;
    const said = document.createElement("span");
    said.className = "text";
    said.textContent = safeText(text);
    item.append(tag, said);
    log.append(item);
    item.scrollIntoView({ block: "end" });
    return item;
  }

  function showNotice(kind, code, text) {
    const item = show("notice " + kind, text, kind + " " + code);
    item.dataset.code = code;
  }

  // What the page says itself (the connection), apart from the server's
  // notices: the server never said these.
  function showLocal(code, text) {
    const item = show("local", text, "page: " + code);
    item.dataset.code = code;
  }

  // The trace panel (twistd sockchat --web ... --trace): the server's
  // "!info trace:" notices, and this page's own frames.  It opens once the
  // server has sent a trace notice; without --trace it never shows.
  function trace(who, text) {
    const item = document.createElement("li");
    item.className = "trace-" + who;
    const tag = document.createElement("span");
    tag.className = "who";
    tag.textContent = who === "server" ? "server" : "page";
    const said = document.createElement("span");
    said.className = "text";
    said.textContent = safeText(text);
    item.append(tag, said);
    traceLog.append(item);
    while (traceLog.childElementCount > TRACE_KEPT) traceLog.firstElementChild.remove();
    if (!tracePanel.hidden) item.scrollIntoView({ block: "end" });
  }

  // Keep only the allowed elements and attributes of a parsed SVG.
  function cleaned(node) {
    if (node.namespaceURI !== SVG_NS || !SVG_ELEMENTS.has(node.localName)) return null;
    const copy = document.createElementNS(SVG_NS, node.localName);
    for (const attribute of node.attributes) {
      const name = attribute.name;
      if (!SVG_ATTRIBUTES.has(name)) continue;
      if (name === "marker-end" && !/^url\(#[a-z-]+\)$/.test(attribute.value)) continue;
      copy.setAttribute(name, attribute.value);
    }
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) {
        copy.append(document.createTextNode(child.data));
      } else if (child.nodeType === Node.ELEMENT_NODE) {
        const kept = cleaned(child);
        if (kept) copy.append(kept);
      }
    }
    return copy;
  }

  function drawLadder(text, fetchedAt) {
    const parsed = new DOMParser().parseFromString(text, "image/svg+xml");
    const svg = cleaned(parsed.documentElement);
    if (!svg) return;
    ladderDrawing.replaceChildren(svg);
    ladder.hidden = false;
    const mark = svg.querySelector("[data-time-wait-ends]");
    const drawn = parseFloat(svg.getAttribute("data-now"));
    ladderEnds = null;
    if (mark && !isNaN(drawn)) {
      // Seconds left when the server drew it, counted on from when it came.
      const left = parseFloat(mark.getAttribute("data-time-wait-ends")) - drawn;
      if (!isNaN(left)) ladderEnds = fetchedAt + left * 1000;
    }
    countDown();
  }

  function countDown() {
    if (countdownTimer) clearTimeout(countdownTimer);
    countdownTimer = null;
    if (ladderEnds === null) {
      ladderCountdown.hidden = true;
      return;
    }
    const left = Math.max(0, Math.round((ladderEnds - Date.now()) / 1000));
    ladderCountdown.hidden = false;
    ladderCountdown.textContent =
      "TIME_WAIT (时间等待): " + (left > 0 ? left + " s left" : "over") +
      ", counted down here from when the server drew this ladder";
    if (left > 0) countdownTimer = setTimeout(countDown, 1000);
  }

  function fetchLadder() {
    ladderTimer = null;
    const path = ladderPath;
    if (!path) return;
    fetch(path, { cache: "no-store" })
      .then(function (response) {
        return response.ok ? response.text() : null;
      })
      .then(function (text) {
        if (text && path === ladderPath) drawLadder(text, Date.now());
      })
      .catch(function () {});
  }

  function ladderSoon(delay) {
    if (!ladderPath) return;
    if (delay === undefined) {
      if (ladderTimer) return; // one is due already
      delay = LADDER_EVERY;
    }
    ladderTimer = setTimeout(fetchLadder, delay);
  }

  function bytes(text) {
    return encoder.encode(text).length;
  }

  function setTraceOpen(open) {
    tracePanel.hidden = !open;
    body.classList.toggle("tracing", open);
    traceToggle.setAttribute("aria-expanded", open ? "true" : "false");
    if (open && traceLog.lastElementChild) {
      traceLog.lastElementChild.scrollIntoView({ block: "end" });
    }
  }

  // Why what the user did was not sent; it goes when they type again.
  function explain(text) {
    why.textContent = text;
    why.hidden = false;
  }

  function unexplain() {
    why.hidden = true;
    why.textContent = "";
  }

  function setState(next, message) {
    state = next;
    body.dataset.state = next;
    status.textContent = message;
    const yours = next === "yours";
    const talking = yours || next === "waiting";
    // While waiting the input stays open, so that q can be typed (as in the
    // terminal client); other lines are not sent then, and the page says so.
    input.disabled = !talking;
    send.disabled = !talking;
    quit.disabled = !talking;
    reconnect.hidden = !(next === "ended" || next === "lost");
    if (!talking) unexplain();
    if (yours) input.focus();
    // The footer may have changed height (the New conversation button): keep the
    // last line in view.
    if (log.lastElementChild) log.lastElementChild.scrollIntoView({ block: "end" });
  }

  function received(event) {
    if (typeof event.data !== "string") return;
    const message = parse(event.data);
    if (message.kind === "info" && message.code === "trace") {
      traceToggle.hidden = false;
      trace("server", message.text);
      ladderSoon();
      return;
    }
    if (message.kind === "info" && message.code === "ladder" && message.text.startsWith("/trace/")) {
      ladderPath = message.text;
      ladderSoon(0);
      return;
    }
    trace("page", "frame in: a text message of " + bytes(event.data) + " bytes");
    if (message.answer !== undefined) {
      if (message.answer === QUIT) {
        show("peer", QUIT, peer);
        setState("ended", "The other side said q: the conversation is over.");
        return;
      }
      show("peer", message.answer, peer);
      if (state === "waiting") setState("yours", "Your turn.");
      return;
    }
    showNotice(message.kind, message.code, message.text);
    if (message.code === "paired") peer = "partner";
    if (message.kind === "info" && message.code === "listen") {
      // The other side speaks first (the second client of a pair).
      setState("waiting", "Waiting for the other side's first line…");
    } else if (message.kind === "bye") {
      setState("ended", "The conversation is over (" + message.code + ").");
    } else if (
      message.kind === "error" &&
      message.code !== "out-of-turn" &&
      state === "waiting"
    ) {
      setState("yours", "Your turn again.");
    } else if (state === "connecting") {
      setState("yours", "Your turn: you speak first.");
    }
  }

  function closed(event) {
    socket = null;
    // The close's last packets and the kernel check come after the socket.
    for (const delay of LADDER_AFTER_CLOSE) setTimeout(fetchLadder, delay);
    trace(
      "page",
      "close: code " + event.code + " (" + (CLOSE_NAMES[event.code] || "see RFC 6455") +
        ")" + (event.reason ? ", reason " + event.reason : "") +
        (event.wasClean
          ? "; the close handshake was done: a Close frame each way (whether TCP then " +
            "closed with FINs or an RST is not seen by the page: the server's lines " +
            "and the ladder say)"
          : "; not clean: the TCP connection ended without the close handshake"),
    );
    if (state === "ended") return;
    if (!opened) {
      anew = false; // no new conversation began
      showLocal("unreachable", "could not reach the server; is it running?");
      setState("lost", "Could not reach the server. Press New conversation to try again.");
      return;
    }
    const code = event.code === 1006 ? "" : " (code " + event.code + ")";
    showLocal("connection-lost", "the connection was lost" + code + ".");
    setState("lost", "Connection lost. Press New conversation to start another.");
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    setState("connecting", "Connecting…");
    peer = "server";
    opened = false;
    ladderPath = null; // the new conversation's comes with its trace
    socket = new WebSocket(scheme + location.host + "/chat");
    socket.addEventListener("open", function () {
      opened = true;
      trace(
        "page",
        "open: the server answered the page's HTTP GET /chat with 101 Switching " +
          "Protocols; this TCP connection now carries WebSocket frames",
      );
      if (anew) {
        anew = false;
        const rule = document.createElement("li");
        rule.className = "rule";
        rule.textContent = "new conversation";
        log.append(rule);
        trace("page", "a new conversation: a new TCP connection, a new upgrade");
      }
    });
    // The server's first line (welcome, listen, or busy) says whose turn it is.
    socket.addEventListener("message", received);
    socket.addEventListener("close", closed);
  }

  function say(text) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(text);
    trace(
      "page",
      "frame out: a text message of " + bytes(text) + " bytes (masked, as every " +
        "frame from a browser is)",
    );
    show("self", text, "you");
    if (text === QUIT) {
      setState("ended", "You quit.");
    } else {
      setState("waiting", "Waiting for the answer…");
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (state !== "yours" && state !== "waiting") return;
    const text = input.value;
    if (text === "") {
      explain("Nothing to send: an empty line is not sent. Type a line first (q quits).");
      return;
    }
    if (state === "waiting" && text !== QUIT) {
      // Kept in the input, to send when the answer has come.
      explain(
        "Not sent: still waiting for the answer to your last line. " +
          "Send it when your turn comes back, or send q to quit."
      );
      return;
    }
    unexplain();
    input.value = "";
    say(text);
  });
  input.addEventListener("input", unexplain);
  quit.addEventListener("click", function () {
    if (state === "yours" || state === "waiting") say(QUIT);
  });
  traceToggle.addEventListener("click", function () {
    setTraceOpen(tracePanel.hidden);
  });
  traceClose.addEventListener("click", function () {
    setTraceOpen(false);
    traceToggle.focus();
  });
  reconnect.addEventListener("click", function () {
    if (socket) return;
    anew = true;
    connect();
  });

  connect();
})();
