// natter's page: pick a name, join rooms, chat. Each room shows its recent
// history and loads older messages when scrolled to the top. The page
// reconnects on its own (exponential backoff with jitter) and rejoins every
// room with `since`, so nothing is missed or doubled, and keeps every post
// with an `id` until the server acknowledges it, so a retry after a lost
// connection is stored once. Every user-supplied string is rendered as
// text (textContent), never as HTML.

const USER_RE = /^[A-Za-z0-9_-]{1,32}$/;
const ROOM_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
const HISTORY_PAGE = 50;
const GROUP_GAP_MS = 5 * 60 * 1000; // consecutive messages within this are grouped
const TYPING_SHOWN_MS = 5000;
const EMOJI = ["😀", "😂", "😊", "😍", "🤔", "😢", "😮", "😎", "👍", "👎", "👏", "🙏",
  "🎉", "❤️", "🔥", "✅", "❌", "👀", "💡", "🚀", "☕", "🍕", "🌟", "👋"];

const $ = (id) => document.getElementById(id);

const state = {
  user: "",
  ws: null,
  attempts: 0,
  timer: null,
  retry: null,          // timer that resends the outbox after "unavailable"
  rooms: new Map(),     // name -> room, in the order they were joined
  active: "",           // the room shown
  outbox: new Map(),    // id -> {room, text}: posts not yet acknowledged
  retryDelay: 1000,     // the next resend after "unavailable" or "rate_limited", doubling to 30 s
};

function newRoom(name) {
  return {
    name,
    joined: false,        // joined on the current connection
    joinedOnce: false,    // a rejoin resumes with since
    historyLoaded: false, // the newest page of history has been shown
    lastSeq: 0,           // newest seq shown
    oldest: 0,            // oldest seq shown, 0 when none
    more: false,          // older messages exist
    loadingOlder: false,  // a history request for older messages is out
    items: [],            // {key, ev} for messages, {key, sys} for system lines, by key
    heldLines: [],        // system lines waiting for the history to be shown
    resetOnJoined: false, // joined without since: the view may have a gap, so reload it
    seen: new Set(),      // seqs shown, so nothing appears twice
    members: null,        // Set of users present, or null while presence is unavailable
    unread: 0,
    typing: new Map(),    // user -> timer
  };
}

function setStatus(text, cls) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + cls;
}

function send(obj) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(obj));
    return true;
  }
  return false;
}

function saveRooms() {
  localStorage.setItem("natter.rooms", JSON.stringify([...state.rooms.keys()]));
  localStorage.setItem("natter.active", state.active);
}

// --- rendering -------------------------------------------------------------

// linkify appends text to parent, with http(s) links as anchors.
function linkify(parent, text) {
  const re = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g;
  let at = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > at) parent.append(text.slice(at, m.index));
    const a = document.createElement("a");
    a.href = m[0];
    a.textContent = m[0];
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    parent.append(a);
    at = m.index + m[0].length;
  }
  if (at < text.length) parent.append(text.slice(at));
}

function messageItem(ev, prev) {
  const li = document.createElement("li");
  li.dataset.seq = ev.seq;
  const grouped = prev && prev.ev && prev.ev.from === ev.from && ev.ts - prev.ev.ts < GROUP_GAP_MS;
  if (grouped) li.className = "cont";
  const time = document.createElement("time");
  const d = new Date(ev.ts);
  time.dateTime = d.toISOString();
  time.textContent = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  time.title = d.toLocaleString();
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = ev.from;
  const text = document.createElement("span");
  text.className = "text";
  linkify(text, ev.text);
  li.append(time, from, text);
  return li;
}

function systemItem(text) {
  const li = document.createElement("li");
  li.className = "system";
  li.textContent = text;
  return li;
}

function itemNode(room, i) {
  const it = room.items[i];
  return it.ev ? messageItem(it.ev, room.items[i - 1]) : systemItem(it.sys);
}

// renderMessages rebuilds the active room's list, keeping the reader's
// place: at the bottom when they were there, else the same distance from
// it (so older messages appear above without moving what is read).
function renderMessages() {
  const list = $("messages");
  const room = state.rooms.get(state.active);
  const fromBottom = list.scrollHeight - list.scrollTop;
  const atBottom = fromBottom - list.clientHeight < 40;
  const nodes = room ? room.items.map((_, i) => itemNode(room, i)) : [];
  list.replaceChildren(...nodes);
  list.scrollTop = atBottom ? list.scrollHeight : list.scrollHeight - fromBottom;
}

// addItem puts an item in its room at its place by key; in the active room
// it is shown at once (appended when it is the newest, the usual case).
function addItem(room, item, render = true) {
  let i = room.items.length;
  while (i > 0 && room.items[i - 1].key > item.key) i--;
  room.items.splice(i, 0, item);
  if (!render || room.name !== state.active) return;
  if (i < room.items.length - 1) {
    renderMessages();
    return;
  }
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(itemNode(room, i));
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// addMessage adds a message event to room; render false leaves showing it
// to the caller (a page of history is shown at once).
function addMessage(room, ev, live, render = true) {
  if (!ev || typeof ev.seq !== "number" || typeof ev.ts !== "number" || typeof ev.from !== "string" ||
      typeof ev.text !== "string" || room.seen.has(ev.seq)) return;
  room.seen.add(ev.seq);
  room.lastSeq = Math.max(room.lastSeq, ev.seq);
  room.oldest = room.oldest ? Math.min(room.oldest, ev.seq) : ev.seq;
  addItem(room, { key: ev.seq, ev }, render);
  if (live && room.name !== state.active && ev.from !== state.user) {
    room.unread++;
    renderRooms();
  }
}

// showSystem adds a line to room (the active one by default) after the
// messages shown so far; until the room's history is shown, the line
// waits, so that it does not land above it.
function showSystem(text, room = state.rooms.get(state.active), now = false) {
  if (!room) return;
  if (!room.historyLoaded && !now) {
    room.heldLines.push(text);
    return;
  }
  addItem(room, { key: room.lastSeq + 0.5, sys: text });
}

function clearRoom(room) {
  room.items = [];
  room.seen.clear();
  room.lastSeq = 0;
  room.oldest = 0;
  room.more = false;
  if (room.name === state.active) renderMessages();
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren(...[...state.rooms.values()].map((room) => {
    const li = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "room" + (room.name === state.active ? " active" : "");
    open.dataset.room = room.name;
    open.textContent = "#" + room.name;
    if (room.name === state.active) open.setAttribute("aria-current", "true");
    if (room.unread > 0) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = room.unread > 99 ? "99+" : String(room.unread);
      badge.setAttribute("aria-label", `${room.unread} unread`);
      open.append(" ", badge);
    }
    open.addEventListener("click", () => activate(room.name));
    const leave = document.createElement("button");
    leave.type = "button";
    leave.className = "leave";
    leave.textContent = "×";
    leave.title = `Leave #${room.name}`;
    leave.setAttribute("aria-label", `Leave ${room.name}`);
    leave.addEventListener("click", () => leaveRoom(room.name));
    li.append(open, leave);
    return li;
  }));
}

function renderMembers() {
  const room = state.rooms.get(state.active);
  const members = room && room.members;
  $("members-unavailable").hidden = members !== null && members !== undefined;
  $("member-count").textContent = members ? `(${members.size})` : "";
  $("member-list").replaceChildren(...(members ? [...members].sort() : []).map((u) => {
    const li = document.createElement("li");
    li.textContent = u;
    if (u === state.user) li.className = "me";
    return li;
  }));
}

function renderTyping() {
  const room = state.rooms.get(state.active);
  const users = room ? [...room.typing.keys()].sort() : [];
  $("typing").textContent = users.length === 0 ? "" :
    users.length === 1 ? `${users[0]} is typing…` : `${users.join(", ")} are typing…`;
}

function activate(name) {
  const room = state.rooms.get(name);
  if (!room) return;
  state.active = name;
  room.unread = 0;
  $("room-name").textContent = "#" + name;
  saveRooms();
  renderRooms();
  renderMembers();
  renderTyping();
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
  renderMessages();
  list.scrollTop = list.scrollHeight;
  if (room.joined && !room.historyLoaded) requestHistory(room);
  $("text").focus();
}

// --- rooms -----------------------------------------------------------------

function joinMessage(room) {
  // A rejoin asks for what was missed since the newest message shown. A
  // join without since (the first, or one before the history was in)
  // reloads the view from history once joined.
  if (room.joinedOnce && room.historyLoaded) return { type: "join", room: room.name, since: room.lastSeq };
  room.resetOnJoined = room.items.length > 0;
  return { type: "join", room: room.name };
}

function openRoom(name) {
  if (!ROOM_RE.test(name)) {
    $("room-error").textContent = "A room is 1 to 64 lower-case letters, digits, '_' or '-', starting with a letter or digit.";
    $("room-error").hidden = false;
    return;
  }
  $("room-error").hidden = true;
  if (!state.rooms.has(name)) {
    state.rooms.set(name, newRoom(name));
    send(joinMessage(state.rooms.get(name)));
  }
  activate(name);
}

function leaveRoom(name) {
  send({ type: "leave", room: name });
  state.rooms.delete(name);
  for (const [id, post] of state.outbox) if (post.room === name) state.outbox.delete(id);
  if (state.active === name) {
    state.active = state.rooms.size ? [...state.rooms.keys()][0] : "";
  }
  saveRooms();
  if (state.active) {
    activate(state.active);
  } else {
    renderRooms();
    renderMembers();
    renderMessages();
    $("room-name").textContent = "no room: join one";
  }
}

function requestHistory(room) {
  room.historyLoaded = false;
  send({ type: "history", room: room.name, limit: HISTORY_PAGE });
}

function loadOlder() {
  const room = state.rooms.get(state.active);
  if (!room || !room.more || room.loadingOlder || !room.oldest) return;
  room.loadingOlder = send({ type: "history", room: room.name, before: room.oldest, limit: HISTORY_PAGE });
}

function flushOutbox(room) {
  for (const [id, post] of state.outbox) {
    if (post.room === room.name) send({ type: "message", room: post.room, text: post.text, id });
  }
}

// --- events ----------------------------------------------------------------

function onEvent(ev) {
  const room = typeof ev.room === "string" ? state.rooms.get(ev.room) : undefined;
  switch (ev.type) {
    case "welcome":
      state.attempts = 0;
      setStatus("online", "online");
      for (const r of state.rooms.values()) send(joinMessage(r));
      break;
    case "joined":
      if (!room) break;
      room.joined = true;
      room.members = Array.isArray(ev.users) ? new Set(ev.users) : null;
      if (!room.historyLoaded || ev.recovered === false || room.resetOnJoined) {
        // First join, a join without since, or the server cannot show
        // that the replay was whole: load the view from history.
        if (ev.recovered === false || room.resetOnJoined) clearRoom(room);
        room.resetOnJoined = false;
        requestHistory(room);
      }
      room.joinedOnce = true;
      if (room.name === state.active) renderMembers();
      flushOutbox(room);
      break;
    case "message":
      if (!room) break;
      addMessage(room, ev, true);
      if (room.typing.has(ev.from)) {
        clearTimeout(room.typing.get(ev.from));
        room.typing.delete(ev.from);
        if (room.name === state.active) renderTyping();
      }
      break;
    case "history": {
      if (!room) break;
      const older = room.loadingOlder;
      for (const m of Array.isArray(ev.messages) ? ev.messages : []) addMessage(room, m, false, false);
      if (older || !room.historyLoaded) room.more = !!ev.more;
      room.loadingOlder = false;
      room.historyLoaded = true;
      if (room.name === state.active) renderMessages();
      for (const text of room.heldLines.splice(0)) showSystem(text, room);
      // A view too short to scroll is filled further at once.
      const list = $("messages");
      if (room.name === state.active && list.scrollHeight <= list.clientHeight) loadOlder();
      break;
    }
    case "presence":
      if (!room) break;
      if ((ev.event !== "join" && ev.event !== "leave") || typeof ev.user !== "string") break;
      if (room.members) {
        if (ev.event === "join") room.members.add(ev.user); else room.members.delete(ev.user);
      }
      if (ev.event === "leave") clearTimeout(room.typing.get(ev.user)), room.typing.delete(ev.user);
      if (ev.user !== state.user) showSystem(`${ev.user} ${ev.event === "join" ? "joined" : "left"}`, room);
      if (room.name === state.active) renderMembers();
      break;
    case "who":
      if (!room) break;
      room.members = new Set(ev.users || []);
      if (room.name === state.active) renderMembers();
      break;
    case "typing": {
      if (!room || ev.user === state.user) break;
      clearTimeout(room.typing.get(ev.user));
      room.typing.set(ev.user, setTimeout(() => { room.typing.delete(ev.user); renderTyping(); }, TYPING_SHOWN_MS));
      if (room.name === state.active) renderTyping();
      break;
    }
    case "ack":
      state.outbox.delete(ev.id);
      state.retryDelay = 1000;
      break;
    case "error":
      for (const r of state.rooms.values()) r.loadingOlder = false;
      if ((ev.code === "unavailable" || ev.code === "rate_limited") && state.outbox.has(ev.id)) {
        // The server could not take it now; the id makes a resend safe.
        if (!state.retry) {
          showSystem(`not sent yet (${ev.message}); retrying`, state.rooms.get(state.outbox.get(ev.id).room));
          const delay = state.retryDelay / 2 + Math.random() * state.retryDelay / 2;
          state.retryDelay = Math.min(state.retryDelay * 2, 30000);
          state.retry = setTimeout(() => {
            state.retry = null;
            for (const r of state.rooms.values()) if (r.joined) flushOutbox(r);
          }, delay);
        }
        break;
      }
      if (ev.id !== undefined) state.outbox.delete(ev.id);
      showSystem(`error: ${ev.code}: ${ev.message}`);
      break;
    default:
      // Event types this page does not know are ignored.
      break;
  }
}

// --- connection ------------------------------------------------------------

function connect() {
  clearTimeout(state.timer);
  setStatus(state.attempts ? `reconnecting (try ${state.attempts + 1})` : "connecting", "connecting");
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws?user=${encodeURIComponent(state.user)}`);
  state.ws = ws;
  ws.onmessage = (m) => {
    for (const line of String(m.data).split("\n")) {
      if (!line.trim()) continue;
      try {
        const ev = JSON.parse(line);
        if (ev && typeof ev === "object") onEvent(ev);
      } catch (err) {
        // One bad event must not stop the others.
        console.warn("natter: event not handled", line, err);
      }
    }
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ws = null;
    clearTimeout(state.retry); // joined flushes the outbox again
    state.retry = null;
    for (const r of state.rooms.values()) {
      r.joined = false;
      r.loadingOlder = false;
    }
    state.attempts++;
    // Exponential backoff, capped at 30 s, with "equal" jitter: between
    // half the delay and all of it.
    const cap = Math.min(30000, 500 * 2 ** Math.min(state.attempts, 6));
    const delay = Math.round(cap / 2 + Math.random() * cap / 2);
    setStatus(`offline, retrying in ${Math.ceil(delay / 1000)} s`, "offline");
    if (state.attempts === 5) {
      showSystem("Still cannot connect. The server may be down, or it refuses this name or page origin.", undefined, true);
    }
    state.timer = setTimeout(connect, delay);
  };
}

function start(user, rooms, active) {
  if (!USER_RE.test(user)) {
    $("login-error").textContent = "A name is 1 to 32 letters, digits, '_' or '-'.";
    $("login-error").hidden = false;
    return;
  }
  if (!ROOM_RE.test(active)) {
    $("login-error").textContent = "A room is 1 to 64 lower-case letters, digits, '_' or '-', starting with a letter or digit.";
    $("login-error").hidden = false;
    return;
  }
  localStorage.setItem("natter.user", user);
  state.user = user;
  for (const name of rooms) {
    if (ROOM_RE.test(name) && !state.rooms.has(name)) state.rooms.set(name, newRoom(name));
  }
  if (!state.rooms.has(active)) state.rooms.set(active, newRoom(active));
  $("login").hidden = true;
  $("chat").hidden = false;
  $("me-label").hidden = false;
  $("me").textContent = user;
  activate(active);
  connect();
}

// --- composer --------------------------------------------------------------

function post() {
  const box = $("text");
  const text = box.value;
  if (!text.trim() || !state.active) return;
  const id = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()).slice(0, 64);
  state.outbox.set(id, { room: state.active, text });
  // Before the room is joined (offline, or just connected), the post
  // waits in the outbox: joined sends it.
  if (state.rooms.get(state.active).joined) send({ type: "message", room: state.active, text, id });
  box.value = "";
  box.focus();
}

function insertAtCursor(box, s) {
  const start = box.selectionStart ?? box.value.length;
  const end = box.selectionEnd ?? box.value.length;
  box.value = box.value.slice(0, start) + s + box.value.slice(end);
  box.selectionStart = box.selectionEnd = start + s.length;
  box.focus();
}

function setupEmoji() {
  const picker = $("emoji-picker");
  for (const e of EMOJI) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = e;
    b.addEventListener("click", () => {
      insertAtCursor($("text"), e);
      picker.hidden = true;
      $("emoji").setAttribute("aria-expanded", "false");
    });
    picker.append(b);
  }
  $("emoji").addEventListener("click", () => {
    picker.hidden = !picker.hidden;
    $("emoji").setAttribute("aria-expanded", String(!picker.hidden));
    if (!picker.hidden) picker.querySelector("button").focus();
  });
  picker.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      picker.hidden = true;
      $("emoji").setAttribute("aria-expanded", "false");
      $("text").focus();
    }
  });
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  const room = $("room").value.trim();
  start($("name").value.trim(), rememberedRooms(), room);
});
$("room-form").addEventListener("submit", (e) => {
  e.preventDefault();
  openRoom($("new-room").value.trim());
  $("new-room").value = "";
});
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  post();
});
$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop < 40) loadOlder();
});
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    post();
  }
});
setupEmoji();
// On a phone the member list starts folded.
if (window.matchMedia("(max-width: 700px)").matches) $("members-box").open = false;

// rememberedRooms are the rooms this browser had open last time.
function rememberedRooms() {
  try {
    const rooms = JSON.parse(localStorage.getItem("natter.rooms") || "[]");
    return Array.isArray(rooms) ? rooms.filter((r) => typeof r === "string") : [];
  } catch {
    return [];
  }
}

const params = new URLSearchParams(location.search);
$("name").value = params.get("user") || localStorage.getItem("natter.user") || "";
$("room").value = params.get("room") || localStorage.getItem("natter.active") || "lobby";
if (params.get("user") && params.get("room")) {
  start(params.get("user"), rememberedRooms(), params.get("room"));
}
