// natter's page: pick a name, join rooms, chat, and talk to one person in
// a direct message. Each room and conversation shows its recent history
// and loads older messages when scrolled to the top. The page
// reconnects on its own (exponential backoff with jitter) and rejoins every
// room with `since`, so nothing is missed or doubled, and keeps every post
// with an `id` until the server acknowledges it, so a retry after a lost
// connection is stored once. Every user-supplied string is rendered as
// text (textContent), never as HTML. Files (attached, dropped or pasted)
// go up with POST /files, with a progress bar and a cancel, and are
// shared by a message naming them; images show inline, other files as a
// chip to download. A file chosen while offline goes up once the
// connection is back.

const USER_RE = /^[A-Za-z0-9_-]{1,32}$/;
const ROOM_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
const HISTORY_PAGE = 50;
const GROUP_GAP_MS = 5 * 60 * 1000; // consecutive messages within this are grouped
const TYPING_SHOWN_MS = 5000;
const TYPING_EVERY_MS = 1500; // the server passes on at most one a second
const INLINE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);
const FILE_ID_RE = /^[0-9a-z_-]{32,64}$/;
const UPLOAD_TRIES = 4; // an upload NATS or the network refused is tried again, up to this often
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
  active: "",           // the room shown, or the last one when a conversation is
  dms: new Map(),       // user -> conversation (a view shaped like a room)
  dmsRetry: null,       // timer that asks for dms again after an error
  dmsDelay: 1000,       // its delay, doubling to 30 s
  activeDM: "",         // the user whose conversation is shown, "" for a room
  outbox: new Map(),    // id -> {room or dm, text}: posts not yet acknowledged
  historyIDs: 0,        // history requests carry an id, so an error names its view
  typingSent: 0,        // when this page last sent typing
  retryDelay: 1000,     // the next resend after "unavailable" or "rate_limited", doubling to 30 s
  auth: false,          // the server wants tokens (CHAT_AUTH_SECRET)
  token: "",            // this tab's token, in auth mode
  checkingToken: false, // a check of the token is out
  stopped: false,       // no more reconnects: the token was refused
  fileMax: 10 * 1024 * 1024, // the largest file the server takes (GET /files says)
  uploads: [],          // files being sent or waiting for the connection, in order
};

function newRoom(name, dm = false) {
  return {
    name,                 // the room, or the other user of a conversation
    dm,                   // a conversation, not a room
    pending: [],          // {id, kind} of the history requests out, oldest first
    resume: null,         // a conversation: the seq it was whole up to when the connection went, until caught up
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
    newestTS: 0,          // ts of the newest dm, for the order of conversations
    typing: new Map(),    // user -> timer
  };
}

// current is the view shown: a conversation or a room.
function current() {
  return state.activeDM ? state.dms.get(state.activeDM) : state.rooms.get(state.active);
}

function conversation(user) {
  if (!state.dms.has(user)) state.dms.set(user, newRoom(user, true));
  return state.dms.get(user);
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
  const f = ev.file;
  if (f && typeof f === "object" && typeof f.id === "string" && FILE_ID_RE.test(f.id) &&
      typeof f.name === "string" && typeof f.size === "number" && typeof f.type === "string") {
    li.append(fileNode(f));
    if (!ev.text.trim()) li.classList.add("file-only"); // the file on the sender's line
  }
  return li;
}

// fileURL is where a file is read; with tokens, an <img> cannot send a
// header, so the token goes in the query.
function fileURL(id) {
  return "/files/" + encodeURIComponent(id) + (state.token ? "?token=" + encodeURIComponent(state.token) : "");
}

function humanSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10240 ? 1 : 0)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

// fileNode shows a shared file: an image as a thumbnail (sized by CSS,
// loaded when scrolled to) that opens full size, anything else as a chip
// with its name and size that downloads it.
function fileNode(f) {
  const box = document.createElement("span");
  box.className = "file";
  const a = document.createElement("a");
  a.href = fileURL(f.id);
  a.title = `${f.name} (${humanSize(f.size)})`;
  if (INLINE_TYPES.has(f.type)) {
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.className = "thumb-link";
    const img = document.createElement("img");
    img.className = "thumb";
    img.loading = "lazy";
    img.alt = f.name;
    img.src = a.href;
    a.append(img);
  } else {
    a.className = "file-chip";
    a.download = f.name;
    a.textContent = `📄 ${f.name} · ${humanSize(f.size)}`;
  }
  box.append(a);
  return box;
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
  const room = current();
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
  if (!render || room !== current()) return;
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
  if (live && room !== current() && ev.from !== state.user) {
    room.unread++;
    if (room.dm) renderDMs(); else renderRooms();
  }
}

// showSystem adds a line to room (the active one by default) after the
// messages shown so far; until the room's history is shown, the line
// waits, so that it does not land above it.
function showSystem(text, room = current(), now = false) {
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
  if (room === current()) renderMessages();
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren(...[...state.rooms.values()].map((room) => {
    const li = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    const shown = room === current();
    open.className = "room" + (shown ? " active" : "");
    open.dataset.room = room.name;
    open.textContent = "#" + room.name;
    if (shown) open.setAttribute("aria-current", "true");
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

// unreadBadge is the count shown beside a room or conversation.
function unreadBadge(n) {
  const badge = document.createElement("span");
  badge.className = "unread";
  badge.textContent = n > 99 ? "99+" : String(n);
  badge.setAttribute("aria-label", `${n} unread`);
  return badge;
}

// renderDMs lists the conversations, newest first.
function renderDMs() {
  const convs = [...state.dms.values()].sort((a, b) => b.newestTS - a.newestTS || (a.name < b.name ? -1 : 1));
  $("dms").replaceChildren(...convs.map((conv) => {
    const li = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    const shown = conv === current();
    open.className = "room dm" + (shown ? " active" : "");
    open.dataset.dm = conv.name;
    open.textContent = "@" + conv.name + (conv.name === state.user ? " (notes)" : "");
    if (shown) open.setAttribute("aria-current", "true");
    if (conv.unread > 0) open.append(" ", unreadBadge(conv.unread));
    open.addEventListener("click", () => openDM(conv.name));
    li.append(open);
    return li;
  }));
}

// renderMembers shows who is in the last room shown; each name starts a
// conversation.
function renderMembers() {
  const room = state.rooms.get(state.active);
  const members = room && room.members;
  $("members-unavailable").hidden = members !== null && members !== undefined;
  $("member-count").textContent = members ? `(${members.size})` : "";
  $("member-list").replaceChildren(...(members ? [...members].sort() : []).map((u) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "member";
    b.textContent = u;
    b.title = u === state.user ? "Notes to yourself" : `Message ${u}`;
    b.addEventListener("click", () => openDM(u));
    if (u === state.user) li.className = "me";
    li.append(b);
    return li;
  }));
}

function renderTyping() {
  const room = current();
  const users = room ? [...room.typing.keys()].sort() : [];
  $("typing").textContent = users.length === 0 ? "" :
    users.length === 1 ? `${users[0]} is typing…` : `${users.join(", ")} are typing…`;
}

function activate(name) {
  const room = state.rooms.get(name);
  if (!room) return;
  state.active = name;
  state.activeDM = "";
  room.unread = 0;
  $("room-name").textContent = "#" + name;
  saveRooms();
  show(room);
  if (room.joined && !room.historyLoaded) requestHistory(room);
}

// openDM shows the conversation with user, made if new; its history is
// read when it is first shown.
function openDM(user) {
  if (!fieldOK("dm-error", USER_RE.test(user), "A name is 1 to 32 letters, digits, '_' or '-'.")) return;
  const conv = conversation(user);
  state.activeDM = user;
  conv.unread = 0;
  $("room-name").textContent = user === state.user ? "@" + user + " (notes to yourself)" : "@" + user;
  show(conv);
  if (!conv.historyLoaded && !conv.pending.some((p) => p.kind === "newest")) requestHistory(conv);
}

// show renders view as the one shown.
function show(view) {
  renderRooms();
  renderDMs();
  renderMembers();
  renderTyping();
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
  renderMessages();
  list.scrollTop = list.scrollHeight;
  $("text").placeholder = view.dm ? `Message @${view.name} (Enter sends)` : "Message (Enter sends, Shift+Enter for a new line)";
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

// fieldOK shows text in the error line id when ok is false, hides the
// line when it is true, and returns ok.
function fieldOK(id, ok, text) {
  $(id).textContent = ok ? "" : text;
  $(id).hidden = ok;
  return ok;
}

function openRoom(name) {
  if (!fieldOK("room-error", ROOM_RE.test(name), "A room is 1 to 64 lower-case letters, digits, '_' or '-', starting with a letter or digit.")) return;
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
  if (state.activeDM) {
    renderRooms();
    renderMembers();
  } else if (state.active) {
    activate(state.active);
  } else {
    renderRooms();
    renderMembers();
    renderMessages();
    $("room-name").textContent = "no room: join one";
  }
}

// askHistory sends a history request for view; kind says what the answer
// is for: "newest", "older" or "after". Answers come in the order asked,
// and an error names the request by its id.
function askHistory(view, kind, fields) {
  const id = "h" + ++state.historyIDs;
  const req = { type: "history", id, limit: HISTORY_PAGE, ...fields };
  if (view.dm) req.dm = view.name; else req.room = view.name;
  if (!send(req)) return false;
  view.pending.push({ id, kind });
  return true;
}

function requestHistory(room) {
  room.historyLoaded = false;
  askHistory(room, "newest", {});
}

function loadOlder() {
  const room = current();
  if (!room || !room.more || room.loadingOlder || !room.oldest) return;
  room.loadingOlder = askHistory(room, "older", { before: room.oldest });
}

// catchUp reads what a conversation shown before got while this page was
// away (conversations recover with dms and history after), from the seq
// it was whole up to: a live dm that came first must not move that on.
function catchUp(conv) {
  if (conv.resume === null || conv.pending.some((p) => p.kind === "after")) return;
  askHistory(conv, "after", { after: conv.resume, limit: 200 });
}

// askDMs asks for the conversations; an error asks again later.
function askDMs() {
  clearTimeout(state.dmsRetry);
  state.dmsRetry = null;
  send({ type: "dms", id: "dms-" + ++state.historyIDs });
}

// postRequest is the request that sends an outbox entry.
function postRequest(id, post) {
  const req = post.dm ? { type: "dm", to: post.dm, text: post.text, id } : { type: "message", room: post.room, text: post.text, id };
  if (post.file) req.file = post.file;
  return req;
}

function flushOutbox(room) {
  for (const [id, post] of state.outbox) {
    if ((!room.dm && post.room === room.name) || (room.dm && post.dm === room.name)) send(postRequest(id, post));
  }
}

// flushDMs sends the dms waiting in the outbox: a dm needs no join.
function flushDMs() {
  for (const [id, post] of state.outbox) if (post.dm) send(postRequest(id, post));
}

// --- events ----------------------------------------------------------------

function onEvent(ev) {
  const room = typeof ev.room === "string" ? state.rooms.get(ev.room) :
    typeof ev.dm === "string" ? state.dms.get(ev.dm) : undefined;
  switch (ev.type) {
    case "welcome":
      state.attempts = 0;
      setStatus("online", "online");
      for (const r of state.rooms.values()) send(joinMessage(r));
      askDMs();
      flushDMs();
      startUploads();
      // A conversation opened while offline reads its history now.
      if (current() && current().dm && !current().historyLoaded) requestHistory(current());
      break;
    case "dms": {
      state.dmsDelay = 1000;
      const listed = new Set();
      for (const c of Array.isArray(ev.conversations) ? ev.conversations : []) {
        if (!c || typeof c.with !== "string" || typeof c.seq !== "number") continue;
        const conv = conversation(c.with);
        listed.add(conv);
        conv.newestTS = Math.max(conv.newestTS || 0, c.ts || 0);
        // A conversation shown before that has newer dms: read them.
        if (conv.resume !== null && c.seq <= conv.resume) conv.resume = null; // nothing missed
        catchUp(conv);
      }
      for (const conv of state.dms.values()) if (!listed.has(conv)) conv.resume = null; // no dm yet
      renderDMs();
      break;
    }
    case "dm": {
      if (typeof ev.from !== "string" || typeof ev.to !== "string") break;
      const conv = conversation(ev.from === state.user ? ev.to : ev.from);
      conv.newestTS = Math.max(conv.newestTS || 0, ev.ts || 0);
      addMessage(conv, ev, true);
      renderDMs();
      break;
    }
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
        if (room === current()) renderTyping();
      }
      break;
    case "history": {
      if (!room) break;
      const kind = (room.pending.shift() || { kind: "newest" }).kind;
      const messages = Array.isArray(ev.messages) ? ev.messages : [];
      if (kind === "after") {
        // Missed while away: new to the reader, so counted as unread.
        for (const m of messages) addMessage(room, m, true);
        const seqs = messages.map((m) => m && m.seq).filter((n) => typeof n === "number");
        if (ev.more && seqs.length) {
          room.resume = Math.max(...seqs);
          catchUp(room);
        } else {
          room.resume = null;
        }
        break;
      }
      for (const m of messages) addMessage(room, m, false, false);
      if (kind === "older" || !room.historyLoaded) room.more = !!ev.more;
      if (kind === "older") room.loadingOlder = false;
      room.historyLoaded = true;
      if (room === current()) renderMessages();
      for (const text of room.heldLines.splice(0)) showSystem(text, room);
      // A view too short to scroll is filled further at once.
      const list = $("messages");
      if (room === current() && list.scrollHeight <= list.clientHeight) loadOlder();
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
      if (room === current()) renderTyping();
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
      if (room === current()) renderTyping();
      break;
    }
    case "ack":
      state.outbox.delete(ev.id);
      state.retryDelay = 1000;
      break;
    case "error":
      // A typing signal that did not go out (NATS away, the room left
      // meanwhile) is not worth a line: the next keystroke sends another.
      if (ev.id === "typing") break;
      if (typeof ev.id === "string" && ev.id.startsWith("h")) {
        // A history request failed: its view stops waiting for it; a
        // catch-up is tried again later.
        for (const v of [...state.rooms.values(), ...state.dms.values()]) {
          const i = v.pending.findIndex((p) => p.id === ev.id);
          if (i < 0) continue;
          if (v.pending[i].kind === "older") v.loadingOlder = false;
          if (v.pending[i].kind === "after") setTimeout(() => catchUp(v), 2000 + Math.random() * 2000);
          v.pending.splice(i, 1);
        }
      }
      if (typeof ev.id === "string" && ev.id.startsWith("dms-")) {
        // dms failed: ask again, later and later.
        if (!state.dmsRetry) {
          const delay = state.dmsDelay / 2 + Math.random() * state.dmsDelay / 2;
          state.dmsDelay = Math.min(state.dmsDelay * 2, 30000);
          state.dmsRetry = setTimeout(askDMs, delay);
        }
        break;
      }
      if ((ev.code === "unavailable" || ev.code === "rate_limited") && state.outbox.has(ev.id)) {
        // The server could not take it now; the id makes a resend safe.
        if (!state.retry) {
          const p = state.outbox.get(ev.id);
          showSystem(`not sent yet (${ev.message}); retrying`, p.dm ? conversation(p.dm) : state.rooms.get(p.room));
          const delay = state.retryDelay / 2 + Math.random() * state.retryDelay / 2;
          state.retryDelay = Math.min(state.retryDelay * 2, 30000);
          state.retry = setTimeout(() => {
            state.retry = null;
            for (const r of state.rooms.values()) if (r.joined) flushOutbox(r);
            flushDMs();
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
  const who = state.token ? `token=${encodeURIComponent(state.token)}` : `user=${encodeURIComponent(state.user)}`;
  const ws = new WebSocket(`${proto}//${location.host}/ws?${who}`);
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
    for (const r of [...state.rooms.values(), ...state.dms.values()]) {
      r.joined = false;
      r.loadingOlder = false;
      r.pending = [];
      // A conversation shown is whole up to its newest dm (or up to where
      // its catch-up stopped): the next connection reads on from there.
      if (r.dm && r.historyLoaded && r.resume === null) r.resume = r.lastSeq;
    }
    clearTimeout(state.dmsRetry);
    state.dmsRetry = null;
    state.attempts++;
    // Exponential backoff, capped at 30 s, with "equal" jitter: between
    // half the delay and all of it.
    const cap = Math.min(30000, 500 * 2 ** Math.min(state.attempts, 6));
    const delay = Math.round(cap / 2 + Math.random() * cap / 2);
    setStatus(`offline, retrying in ${Math.ceil(delay / 1000)} s`, "offline");
    if (state.token && state.attempts >= 2) checkToken();
    if (state.attempts === 5) {
      showSystem("Still cannot connect. The server may be down, or it refuses this name or page origin.", undefined, true);
    }
    if (!state.stopped) state.timer = setTimeout(connect, delay);
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

// --- files -----------------------------------------------------------------

function newPostID() {
  return (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()).slice(0, 64);
}

// sendFiles takes files chosen, dropped or pasted for the view shown:
// each is checked here first (a clear line says why one is not sent),
// then queued; the queue goes up while connected.
function sendFiles(list) {
  const view = current();
  if (!view) return;
  for (const file of list) {
    if (!file || file.size === 0) {
      showSystem(`"${file ? file.name : "?"}" was not sent: it is empty, or a folder, which cannot be sent`, view, true);
      continue;
    }
    if (file.size > state.fileMax) {
      let size = humanSize(file.size), most = humanSize(state.fileMax);
      if (size === most) size = `${file.size.toLocaleString("en")} bytes`, most = `${state.fileMax.toLocaleString("en")} bytes`;
      showSystem(`"${file.name}" was not sent: it is ${size}, more than the ${most} a file may be`, view, true);
      continue;
    }
    const up = { file, dm: view.dm ? view.name : "", room: view.dm ? "" : view.name, tries: 0, xhr: null, li: null, progress: null, note: null };
    state.uploads.push(up);
    uploadRow(up);
    uploadNote(up, "waiting for the connection");
  }
  startUploads();
}

// uploadRow adds a line under the messages for an upload: its name, a
// progress bar and a cancel button.
function uploadRow(up) {
  const li = document.createElement("li");
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = `📎 ${up.file.name} (${humanSize(up.file.size)}) → ${up.dm ? "@" + up.dm : "#" + up.room}`;
  const progress = document.createElement("progress");
  progress.max = up.file.size;
  progress.value = 0;
  const note = document.createElement("span");
  note.className = "note-text";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "cancel";
  cancel.textContent = "Cancel";
  cancel.setAttribute("aria-label", `Cancel sending ${up.file.name}`);
  cancel.addEventListener("click", () => cancelUpload(up));
  li.append(name, progress, note, cancel);
  up.li = li;
  up.progress = progress;
  up.note = note;
  $("uploads").append(li);
}

function uploadNote(up, text) {
  if (up.note) up.note.textContent = text;
}

function endUpload(up) {
  state.uploads = state.uploads.filter((u) => u !== up);
  if (up.li) up.li.remove();
}

function cancelUpload(up) {
  if (up.xhr) up.xhr.abort();
  endUpload(up);
  showSystem(`"${up.file.name}" was not sent: cancelled`, viewOf(up), true);
}

function viewOf(up) {
  return up.dm ? conversation(up.dm) : state.rooms.get(up.room);
}

// startUploads sends the next queued file, one at a time, while
// connected.
function startUploads() {
  if (state.uploads.some((u) => u.xhr)) return;
  const up = state.uploads[0];
  if (!up || !state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  const q = new URLSearchParams();
  if (up.dm) q.set("dm", up.dm); else q.set("room", up.room);
  if (!state.token) q.set("user", state.user);
  const xhr = new XMLHttpRequest();
  up.xhr = xhr;
  xhr.open("POST", "/files?" + q);
  xhr.setRequestHeader("X-File-Name", encodeURIComponent(up.file.name));
  if (state.token) xhr.setRequestHeader("Authorization", "Bearer " + state.token);
  xhr.upload.onprogress = (e) => { if (up.progress) up.progress.value = e.loaded; };
  uploadNote(up, "sending");
  const done = () => {
    up.xhr = null;
    startUploads();
  };
  xhr.onload = () => {
    let answer = {};
    try { answer = JSON.parse(xhr.responseText); } catch { /* a proxy's page */ }
    if (xhr.status === 201 && typeof answer.file === "string") {
      endUpload(up);
      shareFile(up, answer.file);
    } else if ((xhr.status === 503 || xhr.status === 429 || xhr.status === 0) && ++up.tries < UPLOAD_TRIES) {
      retryUpload(up, answer.message || `status ${xhr.status}`);
      return;
    } else {
      endUpload(up);
      showSystem(`"${up.file.name}" was not sent: ${answer.message || "the server answered " + xhr.status}`, viewOf(up), true);
    }
    done();
  };
  xhr.onerror = () => {
    if (++up.tries < UPLOAD_TRIES) {
      retryUpload(up, "the connection failed");
      return;
    }
    endUpload(up);
    showSystem(`"${up.file.name}" was not sent: the connection failed ${UPLOAD_TRIES} times`, viewOf(up), true);
    done();
  };
  xhr.send(up.file);
}

// retryUpload tries an upload again a little later (and later each time).
function retryUpload(up, why) {
  up.xhr = { abort() { clearTimeout(timer); } }; // holds the queue until the retry
  uploadNote(up, `${why}; trying again`);
  if (up.progress) up.progress.value = 0;
  const timer = setTimeout(() => {
    up.xhr = null;
    startUploads();
  }, 1000 * 2 ** up.tries * (0.5 + Math.random() / 2));
}

// shareFile posts a message (or dm) naming an uploaded file; the outbox
// keeps it until acknowledged, as it keeps text.
function shareFile(up, fileID) {
  const id = newPostID();
  const post = up.dm ? { dm: up.dm, text: "", file: fileID } : { room: up.room, text: "", file: fileID };
  state.outbox.set(id, post);
  const room = up.dm ? null : state.rooms.get(up.room);
  if (up.dm || (room && room.joined)) send(postRequest(id, post));
}

function setupFiles() {
  $("attach").addEventListener("click", () => $("file-input").click());
  $("file-input").addEventListener("change", () => {
    sendFiles([...$("file-input").files]);
    $("file-input").value = "";
  });
  const main = document.querySelector("main");
  main.addEventListener("dragover", (e) => {
    if (![...e.dataTransfer.types].includes("Files")) return;
    e.preventDefault();
    main.classList.add("dropping");
  });
  main.addEventListener("dragleave", (e) => {
    if (!main.contains(e.relatedTarget)) main.classList.remove("dropping");
  });
  main.addEventListener("drop", (e) => {
    main.classList.remove("dropping");
    if (!e.dataTransfer || e.dataTransfer.files.length === 0) return;
    e.preventDefault();
    sendFiles([...e.dataTransfer.files]);
  });
  $("text").addEventListener("paste", (e) => {
    const files = e.clipboardData ? [...e.clipboardData.files] : [];
    if (files.length === 0) return; // text: pasted as usual
    e.preventDefault();
    sendFiles(files);
  });
  fetch("/files", { cache: "no-store" }).then((r) => r.ok ? r.json() : null).then((limits) => {
    if (limits && typeof limits.max_bytes === "number" && limits.max_bytes > 0) state.fileMax = limits.max_bytes;
  }).catch(() => { /* the default stands; the server says 413 if need be */ });
}

// --- composer --------------------------------------------------------------

function post() {
  const box = $("text");
  const text = box.value;
  const view = current();
  if (!text.trim() || !view) return;
  const id = newPostID();
  if (view.dm) {
    // Offline, the dm waits in the outbox: welcome sends it.
    state.outbox.set(id, { dm: view.name, text });
    send({ type: "dm", to: view.name, text, id });
  } else {
    state.outbox.set(id, { room: view.name, text });
    // Before the room is joined (offline, or just connected), the post
    // waits in the outbox: joined sends it.
    if (view.joined) send({ type: "message", room: view.name, text, id });
  }
  state.typingSent = 0;
  box.value = "";
  box.focus();
}

// typed tells the room shown that this user is typing, at most once every
// TYPING_EVERY_MS.
function typed() {
  const view = current();
  if (!view || view.dm || !view.joined || !$("text").value.trim()) return;
  const now = Date.now();
  if (now - state.typingSent < TYPING_EVERY_MS) return;
  state.typingSent = now;
  send({ type: "typing", room: view.name, id: "typing" });
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
  if (state.auth && !useToken($("token").value.trim())) return;
  start($("name").value.trim(), rememberedRooms(), room);
});
$("room-form").addEventListener("submit", (e) => {
  e.preventDefault();
  openRoom($("new-room").value.trim());
  $("new-room").value = "";
});
$("dm-form").addEventListener("submit", (e) => {
  e.preventDefault();
  openDM($("new-dm").value.trim());
  $("new-dm").value = "";
});
$("text").addEventListener("input", typed);
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
setupFiles();
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

// --- tokens ----------------------------------------------------------------
//
// On a server with CHAT_AUTH_SECRET the WebSocket needs ?token=JWT, and
// the name is the token's sub. The page takes the token from the URL's
// fragment (#token=…, which browsers never send to the server, so it is
// in no log) or asks for it, and keeps it for this tab (sessionStorage).

// tokenUser returns a token's sub, or "" when it does not look like a
// token. The server checks the token; this only names the user.
function tokenUser(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const sub = JSON.parse(atob(part + "=".repeat((4 - part.length % 4) % 4))).sub;
    return typeof sub === "string" && USER_RE.test(sub) ? sub : "";
  } catch {
    return "";
  }
}

// authMode asks whether the server wants tokens: /ws without a name or
// a token is refused with 401 there, 400 elsewhere. A 429 (too many
// connections from here) says neither: it asks again a little later.
async function authMode() {
  for (let i = 0; i < 20; i++) {
    try {
      const status = (await fetch("/ws", { cache: "no-store" })).status;
      if (status !== 429) return status === 401;
    } catch {
      return false;
    }
    await new Promise((r) => setTimeout(r, 3000));
  }
  return false;
}

// checkToken, after failed connects, asks whether the token is still
// taken; when it is not (expired, or for another server), it asks for a
// new one.
async function checkToken() {
  if (state.checkingToken) return;
  state.checkingToken = true;
  try {
    const resp = await fetch(`/ws?token=${encodeURIComponent(state.token)}`, { cache: "no-store" });
    if (resp.status === 401) {
      sessionStorage.removeItem("natter.token");
      showSystem("Your token is not accepted any more (expired?). Reload the page and paste a new one.", undefined, true);
      clearTimeout(state.timer);
      setStatus("token refused", "offline");
      state.token = "";
      state.stopped = true;
    }
  } catch {
    // The server is away: the reconnects go on.
  } finally {
    state.checkingToken = false;
  }
}

function useToken(token) {
  const user = tokenUser(token);
  if (!user) {
    $("login-error").textContent = "That is not a token: ask the operator for one (chat token -user NAME).";
    $("login-error").hidden = false;
    return false;
  }
  state.token = token;
  sessionStorage.setItem("natter.token", token);
  $("name").value = user;
  return true;
}

const params = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) {
  sessionStorage.setItem("natter.token", fragment.get("token"));
  history.replaceState(null, "", location.pathname + location.search); // out of sight and of the history
}
$("name").value = params.get("user") || localStorage.getItem("natter.user") || "";
$("room").value = params.get("room") || localStorage.getItem("natter.active") || "lobby";
authMode().then((auth) => {
  state.auth = auth;
  if (auth) {
    // Names come from tokens here: the notes that they are not
    // protected go, a token field comes.
    for (const el of document.querySelectorAll(".unprotected")) el.hidden = true;
    $("token-label").hidden = false;
    $("name-label").hidden = true;
    $("name").required = false;
    const saved = sessionStorage.getItem("natter.token");
    if (saved && useToken(saved)) {
      start($("name").value, rememberedRooms(), $("room").value);
    }
    return;
  }
  if (params.get("user") && params.get("room")) {
    start(params.get("user"), rememberedRooms(), params.get("room"));
  }
});
