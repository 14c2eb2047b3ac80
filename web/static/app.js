// natter's first page: pick a name, join a room, chat. It shows the room's
// recent history and loads older messages when scrolled to the top. It
// reconnects on its own (exponential backoff with jitter) and rejoins with
// `since`, so nothing is missed, and keeps every post with an `id` until
// the server acknowledges it, so a retry after a lost connection is stored
// once.

const USER_RE = /^[A-Za-z0-9_-]{1,32}$/;
const ROOM_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;

const $ = (id) => document.getElementById(id);
const state = {
  user: "",
  room: "",
  ws: null,
  attempts: 0,
  lastSeq: 0,          // newest seq shown in the room
  joinedOnce: false,   // a rejoin resumes with since; the first join does not
  seen: new Set(),     // seqs shown, so nothing appears twice
  outbox: new Map(),   // id -> text, posts not yet acknowledged
  timer: null,
  retry: null,         // timer that resends the outbox after "unavailable"
  members: null,       // users present in the room, or null while presence is unavailable
  oldest: 0,           // oldest seq shown, 0 when none
  more: false,         // older messages exist
  loadingOlder: false, // a history request for older messages is out
  historyLoaded: false, // the newest page of history has been shown
};

const HISTORY_PAGE = 50;

function setStatus(text, cls) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + cls;
}

function addLine(li) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// Every user-supplied string goes through textContent, never innerHTML.
// Messages are kept in seq order, wherever they come from (history, a
// replay, live).
function showMessage(ev) {
  if (state.seen.has(ev.seq)) return;
  state.seen.add(ev.seq);
  state.lastSeq = Math.max(state.lastSeq, ev.seq);
  state.oldest = state.oldest ? Math.min(state.oldest, ev.seq) : ev.seq;
  const li = document.createElement("li");
  li.dataset.seq = ev.seq;
  const time = document.createElement("time");
  const d = new Date(ev.ts);
  time.dateTime = d.toISOString();
  time.textContent = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = ev.from;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = ev.text;
  li.append(time, from, text);
  const later = [...$("messages").querySelectorAll("li[data-seq]")].find((el) => Number(el.dataset.seq) > ev.seq);
  if (later) {
    later.before(li);
  } else {
    addLine(li);
  }
}

// clearMessages empties the view before it is loaded again from history.
function clearMessages() {
  $("messages").replaceChildren();
  state.seen.clear();
  state.lastSeq = 0;
  state.oldest = 0;
  state.more = false;
}

function loadOlder() {
  if (!state.more || state.loadingOlder || !state.oldest) return;
  state.loadingOlder = send({ type: "history", room: state.room, before: state.oldest, limit: HISTORY_PAGE });
}

// The member list comes from joined and follows presence events; while
// presence is unavailable joined has no users and the list is hidden.
function showMembers() {
  const el = $("members");
  el.hidden = state.members === null;
  if (state.members !== null) {
    el.textContent = "Here: " + [...state.members].sort().join(", ");
  }
}

function showSystem(text) {
  const li = document.createElement("li");
  li.className = "system";
  li.textContent = text;
  addLine(li);
}

function send(obj) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(obj));
    return true;
  }
  return false;
}

function flushOutbox() {
  for (const [id, text] of state.outbox) {
    send({ type: "message", room: state.room, text, id });
  }
}

function onEvent(ev) {
  switch (ev.type) {
    case "welcome":
      state.attempts = 0;
      setStatus("online", "online");
      // The first join asks for no replay; a rejoin asks for what was
      // missed since the newest message shown.
      send(state.joinedOnce
        ? { type: "join", room: state.room, since: state.lastSeq }
        : { type: "join", room: state.room });
      break;
    case "joined":
      if (!state.historyLoaded || ev.recovered === false) {
        // First join, or the server cannot show that the replay was
        // whole: load the view from history.
        if (ev.recovered === false) clearMessages();
        state.historyLoaded = false;
        send({ type: "history", room: state.room, limit: HISTORY_PAGE });
      }
      state.joinedOnce = true;
      state.members = Array.isArray(ev.users) ? new Set(ev.users) : null;
      showMembers();
      flushOutbox();
      break;
    case "presence":
      if (ev.room !== state.room) break;
      if (state.members !== null) {
        if (ev.event === "join") state.members.add(ev.user); else state.members.delete(ev.user);
        showMembers();
      }
      if (ev.user !== state.user) showSystem(`${ev.user} ${ev.event === "join" ? "joined" : "left"}`);
      break;
    case "message":
      if (ev.room === state.room) showMessage(ev);
      break;
    case "history": {
      if (ev.room !== state.room) break;
      const list = $("messages");
      const fromBottom = list.scrollHeight - list.scrollTop;
      const older = state.loadingOlder;
      for (const m of ev.messages) showMessage(m);
      if (older || !state.oldest || ev.messages.length === 0 || ev.messages[0].seq <= state.oldest) state.more = ev.more;
      if (older) list.scrollTop = list.scrollHeight - fromBottom; // keep the reader's place
      state.loadingOlder = false;
      state.historyLoaded = true;
      // A view too short to scroll is filled further at once.
      if (list.scrollHeight <= list.clientHeight) loadOlder();
      break;
    }
    case "ack":
      state.outbox.delete(ev.id);
      break;
    case "error":
      state.loadingOlder = false;
      if (ev.code === "unavailable" && state.outbox.has(ev.id)) {
        // The server could not store it now; the id makes a resend safe.
        showSystem(`not sent yet (${ev.message}); retrying`);
        if (!state.retry) {
          state.retry = setTimeout(() => { state.retry = null; flushOutbox(); }, 1000 + Math.random() * 2000);
        }
        break;
      }
      if (ev.id !== undefined) state.outbox.delete(ev.id);
      showSystem(`error: ${ev.code}: ${ev.message}`);
      break;
    default:
      // Event types this page does not know yet are ignored.
      break;
  }
}

function connect() {
  clearTimeout(state.timer);
  setStatus(state.attempts ? `reconnecting (try ${state.attempts + 1})` : "connecting", "connecting");
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws?user=${encodeURIComponent(state.user)}`);
  state.ws = ws;
  ws.onmessage = (m) => {
    for (const line of String(m.data).split("\n")) {
      if (!line.trim()) continue;
      let ev;
      try { ev = JSON.parse(line); } catch { continue; }
      onEvent(ev);
    }
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ws = null;
    state.loadingOlder = false;
    state.attempts++;
    // Exponential backoff, capped at 30 s, with full jitter.
    const cap = Math.min(30000, 500 * 2 ** Math.min(state.attempts, 6));
    const delay = Math.round(cap / 2 + Math.random() * cap / 2);
    setStatus(`offline, retrying in ${Math.ceil(delay / 1000)} s`, "offline");
    if (state.attempts >= 5) {
      showSystem("Still cannot connect. The server may be down, or it refuses this name or page origin.");
    }
    state.timer = setTimeout(connect, delay);
  };
}

function start(user, room) {
  if (!USER_RE.test(user)) {
    $("login-error").textContent = "A name is 1 to 32 letters, digits, '_' or '-'.";
    $("login-error").hidden = false;
    return;
  }
  if (!ROOM_RE.test(room)) {
    $("login-error").textContent = "A room is 1 to 64 lower-case letters, digits, '_' or '-', starting with a letter or digit.";
    $("login-error").hidden = false;
    return;
  }
  localStorage.setItem("natter.user", user);
  state.user = user;
  state.room = room;
  $("login").hidden = true;
  $("chat").hidden = false;
  $("room-name").textContent = room;
  $("me").textContent = user;
  $("text").focus();
  connect();
}

function post() {
  const box = $("text");
  const text = box.value;
  if (!text.trim()) return;
  const id = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()).slice(0, 64);
  state.outbox.set(id, text);
  send({ type: "message", room: state.room, text, id });
  box.value = "";
  box.focus();
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  start($("name").value.trim(), $("room").value.trim());
});
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  post();
});
$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop < 40) loadOlder();
});
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    post();
  }
});

const params = new URLSearchParams(location.search);
$("name").value = params.get("user") || localStorage.getItem("natter.user") || "";
if (params.get("room")) $("room").value = params.get("room");
if (params.get("user") && params.get("room")) start(params.get("user"), params.get("room"));
