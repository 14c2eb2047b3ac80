package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"

	"github.com/natter-chat/natter/shared/auth"
	"github.com/natter-chat/natter/shared/browsertest"
	"github.com/natter-chat/natter/shared/embedded"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

// The browser tests run one at a time, not in parallel: each drives a
// Chromium of its own, and several at once beside the other packages'
// tests on a 2-core machine passed their 20 s per step (CI, once, in
// TestBrowserTypingDuringOutage).

// browser starts a headless Chromium (shared/browsertest); each call of
// the returned function opens a new tab in a browser context of its own.
func browser(t *testing.T) func() context.Context { return browsertest.Start(t) }

// The page's parts and gestures, named once in shared/browsertest.
var (
	run1      = browsertest.Run
	enter     = browsertest.Enter
	member    = browsertest.Member
	textShown = browsertest.TextShown
)

const online = browsertest.Online

// Two tabs on the single binary's page chat both ways, and what users
// type is shown as text, never run as HTML.
func TestBrowserTabsChat(t *testing.T) {
	newTab := browser(t)
	m, _ := startMain(t, t.TempDir())
	base := "http://" + m.Addr()

	alice, bob := newTab(), newTab()
	run1(t, alice, "open alice's page",
		chromedp.Navigate(base+"/?user=alice&room=lobby"),
		chromedp.WaitVisible(online))
	// An alert would mean a message ran as script.
	if _, err := chromedp.Run(alice, chromedp.Evaluate[bool](`(window.alert = () => { window.__alerted = true; }, true)`)); err != nil {
		t.Fatal(err)
	}
	run1(t, bob, "open bob's page",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.ID("login")),
		chromedp.SendKeys(chromedp.ID("name"), "bob"),
		chromedp.Click(chromedp.ID("connect")),
		chromedp.WaitVisible(online))

	run1(t, alice, "alice sees bob join",
		chromedp.WaitVisible(`//ol[@id="messages"]/li[@class="system" and text()="bob joined"]`),
		chromedp.WaitVisible(member("bob")))
	run1(t, bob, "bob sees who is here", chromedp.WaitVisible(member("alice")), chromedp.WaitVisible(member("bob")))

	run1(t, alice, "alice sends",
		chromedp.SendKeys(chromedp.ID("text"), "hello bob 👋"), enter(),
		chromedp.WaitVisible(textShown("hello bob 👋")))
	run1(t, bob, "bob sees alice's message", chromedp.WaitVisible(textShown("hello bob 👋")))

	const xss = `<img src=x onerror=alert(1)>`
	run1(t, bob, "bob answers",
		chromedp.SendKeys(chromedp.ID("text"), xss), enter(),
		chromedp.WaitVisible(textShown(xss)))
	run1(t, alice, "alice sees bob's message, from bob",
		chromedp.WaitVisible(textShown(xss)),
		chromedp.WaitVisible(`//ol[@id="messages"]/li[span[@class="from" and text()="bob"] and span[@class="text"]]`))

	imgs, err := chromedp.Run(alice, chromedp.Evaluate[int](`document.querySelectorAll("#messages img").length`))
	if err != nil {
		t.Fatal(err)
	}
	if imgs != 0 {
		t.Fatalf("a message became %d img elements", imgs)
	}
	alerted, err := chromedp.Run(alice, chromedp.Evaluate[bool](`window.__alerted === true`))
	if err != nil || alerted {
		t.Fatalf("a message ran script: %v %v", alerted, err)
	}

	// Emoji from the picker, and a link made clickable.
	run1(t, alice, "alice picks an emoji and sends a link",
		chromedp.Click(chromedp.ID("emoji")),
		chromedp.WaitVisible(`//div[@id="emoji-picker"]/button[text()="🎉"]`),
		chromedp.Click(`//div[@id="emoji-picker"]/button[text()="🎉"]`),
		chromedp.WaitNotVisible(chromedp.ID("emoji-picker")),
		chromedp.SendKeys(chromedp.ID("text"), " see https://example.com/natter"), enter(),
		chromedp.WaitVisible(`//ol[@id="messages"]//span[@class="text" and starts-with(text(), "🎉 see ")]/a[@href="https://example.com/natter" and text()="https://example.com/natter"]`))
	run1(t, bob, "bob sees the emoji and the link",
		chromedp.WaitVisible(`//ol[@id="messages"]//span[@class="text" and starts-with(text(), "🎉 see ")]/a[@href="https://example.com/natter"]`))

	// Consecutive messages of one sender are grouped.
	run1(t, alice, "alice sends twice",
		chromedp.SendKeys(chromedp.ID("text"), "one"), enter(),
		chromedp.SendKeys(chromedp.ID("text"), "two"), enter(),
		chromedp.WaitVisible(`//ol[@id="messages"]/li[@class="cont" and span[@class="text" and text()="two"]]`))
	screenshot(t, alice, "two-tabs")

	// Leaving shows a line and updates the member list.
	run1(t, bob, "bob leaves the room", chromedp.Click(`//button[@aria-label="Leave lobby"]`))
	run1(t, alice, "alice sees bob leave",
		chromedp.WaitVisible(`//ol[@id="messages"]/li[@class="system" and text()="bob left"]`),
		chromedp.WaitNotPresent(member("bob")))
}

// A dm between two pages: started from the member list, counted unread
// in the other page's conversation list, read there from history, and
// answered; typing in a room shows under it on the other page; after a
// reload the conversation is listed again from dms.
func TestBrowserDM(t *testing.T) {
	newTab := browser(t)
	m, _ := startMain(t, t.TempDir())
	base := "http://" + m.Addr()
	alice, bob := newTab(), newTab()
	for _, p := range []struct {
		tab  context.Context
		user string
	}{{alice, "alice"}, {bob, "bob"}} {
		run1(t, p.tab, "open "+p.user+"'s page",
			chromedp.Navigate(base+"/?user="+p.user+"&room=lobby"),
			chromedp.WaitVisible(online))
	}
	run1(t, alice, "alice sees bob", chromedp.WaitVisible(member("bob")))

	run1(t, bob, "bob types in lobby", chromedp.SendKeys(chromedp.ID("text"), "thinking"))
	run1(t, alice, "alice sees bob typing", chromedp.WaitVisible(`//p[@id="typing" and text()="bob is typing…"]`))
	if _, err := chromedp.Run(bob, chromedp.Evaluate[bool](`(document.getElementById("text").value = "", true)`)); err != nil {
		t.Fatal(err)
	}

	run1(t, alice, "alice writes to bob from the member list",
		chromedp.Click(member("bob")),
		chromedp.WaitVisible(`//strong[@id="room-name" and text()="@bob"]`),
		chromedp.SendKeys(chromedp.ID("text"), "psst, bob"), enter(),
		chromedp.WaitVisible(textShown("psst, bob")),
		chromedp.WaitVisible(`//button[@data-dm="bob" and contains(@class, "active")]`))
	run1(t, bob, "bob sees one unread from alice, and reads it",
		chromedp.WaitVisible(`//button[@data-dm="alice"]/span[@class="unread" and text()="1"]`),
		chromedp.WaitNotPresent(textShown("psst, bob")), // not in lobby
		chromedp.Click(`//button[@data-dm="alice"]`),
		chromedp.WaitVisible(`//strong[@id="room-name" and text()="@alice"]`),
		chromedp.WaitVisible(textShown("psst, bob")),
		chromedp.WaitNotPresent(`//button[@data-dm="alice"]/span[@class="unread"]`),
		chromedp.SendKeys(chromedp.ID("text"), "hi alice"), enter(),
		chromedp.WaitVisible(textShown("hi alice")))
	run1(t, alice, "alice gets the answer in the conversation",
		chromedp.WaitVisible(textShown("hi alice")),
		chromedp.WaitVisible(`//ol[@id="messages"]/li[span[@class="from" and text()="bob"] and span[@class="text" and text()="hi alice"]]`))
	screenshot(t, alice, "dm")

	run1(t, bob, "after a reload bob finds the conversation and its history",
		chromedp.Navigate(base+"/?user=bob&room=lobby"),
		chromedp.WaitVisible(online),
		chromedp.Click(`//button[@data-dm="alice"]`),
		chromedp.WaitVisible(textShown("psst, bob")),
		chromedp.WaitVisible(textShown("hi alice")))
	texts, err := chromedp.Run(bob, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#messages li[data-seq] .text")].map((e) => e.textContent)`))
	if err != nil || !slices.Equal(texts, []string{"psst, bob", "hi alice"}) {
		t.Fatalf("bob's conversation shows %q, %v", texts, err)
	}
}

// On a server with CHAT_AUTH_SECRET the page takes its token from the
// URL's fragment (and drops it from the address bar) or asks for it; the
// name is the token's, and the note that names are not protected is gone.
func TestBrowserTokens(t *testing.T) {
	newTab := browser(t)
	m, _ := startMainWith(t, t.TempDir(), func(c *Config) { c.AuthSecret = testSecret })
	base := "http://" + m.Addr()
	now := time.Now()
	aliceTok, err := auth.Sign([]byte(testSecret), "alice", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	bobTok, _ := auth.Sign([]byte(testSecret), "bob", time.Hour, now)
	alice, bob := newTab(), newTab()
	run1(t, alice, "alice opens a link with her token",
		chromedp.Navigate(base+"/?room=lobby#token="+aliceTok),
		chromedp.WaitVisible(online),
		chromedp.WaitVisible(`//strong[@id="me" and text()="alice"]`))
	hash, err := chromedp.Run(alice, chromedp.Evaluate[string](`location.hash`))
	if err != nil || hash != "" {
		t.Fatalf("the token stays in the address bar: %q, %v", hash, err)
	}
	run1(t, bob, "bob pastes his",
		chromedp.Navigate(base+"/?room=lobby"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.WaitNotVisible(`//form[@id="login"]/p[contains(@class, "unprotected")]`),
		chromedp.SendKeys(chromedp.ID("token"), bobTok),
		chromedp.Click(chromedp.ID("connect")),
		chromedp.WaitVisible(online),
		chromedp.WaitVisible(`//strong[@id="me" and text()="bob"]`),
		chromedp.SendKeys(chromedp.ID("text"), "signed in"), enter(),
		chromedp.WaitVisible(textShown("signed in")))
	run1(t, alice, "alice sees bob's message, from bob",
		chromedp.WaitVisible(`//ol[@id="messages"]/li[span[@class="from" and text()="bob"] and span[@class="text" and text()="signed in"]]`))
	run1(t, bob, "a reload keeps the tab's token",
		chromedp.Navigate(base+"/?room=lobby"),
		chromedp.WaitVisible(online),
		chromedp.WaitVisible(`//strong[@id="me" and text()="bob"]`))
}

// blockWebSockets makes the page's new WebSockets fail at once (or work
// again), as a network that drops them would: the page sees each attempt
// closed and retries later, as it does when the server is away.
func blockWebSockets(block bool) chromedp.Action[chromedp.Void] {
	script := `(() => {
		window.__realWebSocket = window.__realWebSocket || window.WebSocket;
		window.WebSocket = function () {
			const ws = { readyState: 3, send() {}, close() {} };
			setTimeout(() => ws.onclose && ws.onclose(), 0);
			return ws;
		};
		return true;
	})()`
	if !block {
		script = `(() => { if (window.__realWebSocket) window.WebSocket = window.__realWebSocket; return true; })()`
	}
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Run(ctx, chromedp.Evaluate[bool](script))
		return err
	})
}

// screenshot saves the tab as name.png under the test's temporary
// directory, and in NATTER_SCREENSHOTS when set (for the README's picture).
func screenshot(t *testing.T, tab context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(tab, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(t.TempDir(), name+".png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shot)
	if dir := os.Getenv("NATTER_SCREENSHOTS"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// Rooms: a second room is joined from the list; messages in a room not
// shown count as unread until it is opened; the rooms are remembered.
func TestBrowserRoomsAndUnread(t *testing.T) {
	newTab := browser(t)
	m, _ := startMain(t, t.TempDir())
	base := "http://" + m.Addr()
	alice, bob := newTab(), newTab()
	run1(t, alice, "alice opens lobby, then dev",
		chromedp.Navigate(base+"/?user=alice&room=lobby"),
		chromedp.WaitVisible(online),
		chromedp.SendKeys(chromedp.ID("new-room"), "dev"),
		chromedp.Click(`//form[@id="room-form"]/button`),
		chromedp.WaitVisible(`//strong[@id="room-name" and text()="#dev"]`),
		chromedp.WaitVisible(member("alice")))
	run1(t, bob, "bob posts in lobby",
		chromedp.Navigate(base+"/?user=bob&room=lobby"),
		chromedp.WaitVisible(online),
		chromedp.SendKeys(chromedp.ID("text"), "anyone in lobby?"), enter(),
		chromedp.SendKeys(chromedp.ID("text"), "hello?"), enter(),
		chromedp.WaitVisible(textShown("hello?")))
	run1(t, alice, "alice sees two unread in lobby",
		chromedp.WaitVisible(`//button[@data-room="lobby"]/span[@class="unread" and text()="2"]`))
	screenshot(t, alice, "unread")
	run1(t, alice, "opening lobby shows them and clears the count",
		chromedp.Click(`//button[@data-room="lobby"]`),
		chromedp.WaitVisible(textShown("hello?")),
		chromedp.WaitNotPresent(`//button[@data-room="lobby"]/span[@class="unread"]`))
	rooms, err := chromedp.Run(alice, chromedp.Evaluate[string](`localStorage.getItem("natter.rooms")`))
	if err != nil || rooms != `["lobby","dev"]` {
		t.Fatalf("remembered rooms %q, %v", rooms, err)
	}

	// On a phone the rooms sit above the messages, and nothing is wider
	// than the screen.
	phone := newTab()
	run1(t, phone, "open the page on a phone-sized screen",
		chromedp.EmulateViewport(390, 844),
		chromedp.Navigate(base+"/?user=carol&room=lobby"),
		chromedp.WaitVisible(textShown("hello?")))
	layout, err := chromedp.Run(phone, chromedp.Evaluate[[]float64](`(() => {
		const side = document.getElementById("sidebar").getBoundingClientRect();
		const list = document.getElementById("messages").getBoundingClientRect();
		return [side.bottom, list.top, document.documentElement.scrollWidth, window.innerWidth];
	})()`))
	if err != nil {
		t.Fatal(err)
	}
	if layout[0] > layout[1]+1 || layout[2] > layout[3] {
		t.Fatalf("phone layout: rooms end at %v, messages start at %v; page %v wide on a %v screen", layout[0], layout[1], layout[2], layout[3])
	}
	screenshot(t, phone, "phone")
}

// Killing the server and starting it again on the same data dir while a
// page stays open: both pages reconnect on their own, what one typed while
// offline is sent then, and the other shows every message once, in order.
// Not parallel: while the server is down, a parallel test could be given
// its port.
func TestBrowserReconnects(t *testing.T) {
	newTab := browser(t)
	dir := t.TempDir()
	m, stop := startMain(t, dir)
	addr := m.Addr()
	alice, bob := newTab(), newTab()
	for _, p := range []struct {
		tab  context.Context
		user string
	}{{alice, "alice"}, {bob, "bob"}} {
		run1(t, p.tab, "open "+p.user+"'s page",
			chromedp.Navigate("http://"+addr+"/?user="+p.user+"&room=lobby"),
			chromedp.WaitVisible(online))
	}
	run1(t, bob, "bob says hello",
		chromedp.SendKeys(chromedp.ID("text"), "before"), enter(),
		chromedp.WaitVisible(textShown("before")))
	run1(t, alice, "alice sees it", chromedp.WaitVisible(textShown("before")))

	stop()
	for _, tab := range []context.Context{alice, bob} {
		run1(t, tab, "the page notices", chromedp.WaitNotPresent(online))
	}
	run1(t, bob, "bob types while offline",
		chromedp.SendKeys(chromedp.ID("text"), "offline 1"), enter(),
		chromedp.SendKeys(chromedp.ID("text"), "offline 2"), enter(),
		chromedp.SendKeys(chromedp.ID("text"), "offline 3"), enter())

	// Alice's page stays away until bob's messages are stored, so that it
	// gets them by rejoining with since, not live.
	run1(t, alice, "alice's page cannot reach the server", blockWebSockets(true))
	startMainAt(t, dir, addr)
	run1(t, bob, "bob's page is back and sends what was typed",
		chromedp.WaitVisible(online),
		chromedp.WaitVisible(textShown("offline 3")))
	status, err := chromedp.Run(alice, chromedp.Evaluate[string](`document.getElementById("status").textContent`))
	if err != nil || status == "online" {
		t.Fatalf("alice's page is %q (%v) while blocked", status, err)
	}
	run1(t, alice, "alice's page is back with bob's messages",
		blockWebSockets(false),
		chromedp.WaitVisible(online),
		chromedp.WaitVisible(textShown("offline 3")))
	screenshot(t, alice, "reconnected")
	for _, tab := range []context.Context{alice, bob} {
		texts, err := chromedp.Run(tab, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#messages li[data-seq] .text")].map((e) => e.textContent)`))
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"before", "offline 1", "offline 2", "offline 3"}; !slices.Equal(texts, want) {
			t.Fatalf("the page shows %q, want %q (each once, in order)", texts, want)
		}
	}
}

// While NATS is away the page goes on: typing gets unavailable from the
// edge, which the page keeps to itself (no error line per keystroke), and
// a message waits in the outbox with one line saying so.
func TestBrowserTypingDuringOutage(t *testing.T) {
	newTab := browser(t)
	ns, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { embedded.Stop(ns) })
	startBroadcaster(t, ns)
	e := startEdge(t, ns, nil)
	tab := newTab()
	run1(t, tab, "open the page",
		chromedp.Navigate(e.url+"/?user=alice&room=lobby"),
		chromedp.WaitVisible(online))

	embedded.Stop(ns)
	servicetest.WaitFor(t, wait, "readyz 503", func() bool { code, _ := get(t, e.url+"/readyz"); return code == http.StatusServiceUnavailable })
	// The typing goes out with the first key, before the message; its
	// answer comes first on the socket, so the outbox's line is the sign
	// that both answers were handled.
	run1(t, tab, "type and send during the outage",
		chromedp.SendKeys(chromedp.ID("text"), "during the outage"), enter(),
		chromedp.WaitVisible(`//ol[@id="messages"]/li[@class="system" and starts-with(text(), "not sent yet")]`))
	lines, err := chromedp.Run(tab, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#messages li.system")].map((e) => e.textContent)`))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "error:") {
			t.Fatalf("the page shows %q among %q: a typing signal's refusal is not for the reader", l, lines)
		}
	}
}

// The page opens on the room's recent history and loads older messages
// as the reader scrolls up, in order, until the beginning.
func TestBrowserHistoryOnScroll(t *testing.T) {
	newTab := browser(t)
	m, _ := startMain(t, t.TempDir())
	nc, err := nats.Connect("nats://" + m.NATSAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	const n = 130
	for i := range n {
		post := proto.Encode(proto.Post{From: "bot", Text: fmt.Sprintf("m%d", i), ID: fmt.Sprint(i)})
		if i == 0 {
			// The broadcaster starts serving just after Open.
			servicetest.WaitFor(t, wait, "a broadcaster", func() bool {
				_, err := nc.Request(subject.InRoom("lobby"), post, wait)
				return err == nil
			})
			continue
		}
		if _, err := nc.Request(subject.InRoom("lobby"), post, wait); err != nil {
			t.Fatal(err)
		}
	}
	tab := newTab()
	run1(t, tab, "open the page",
		chromedp.Navigate("http://"+m.Addr()+"/?user=alice&room=lobby"),
		chromedp.WaitVisible(textShown(fmt.Sprintf("m%d", n-1))))
	shown, err := chromedp.Run(tab, chromedp.Evaluate[int](`document.querySelectorAll("#messages li[data-seq]").length`))
	if err != nil {
		t.Fatal(err)
	}
	if shown >= n {
		t.Fatalf("the page shows all %d messages at once; want the recent ones first", shown)
	}
	ctx, cancel := context.WithTimeout(tab, 20*time.Second)
	defer cancel()
	// Scroll to the top until the first message is there.
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](`(() => {
		const list = document.getElementById("messages");
		list.scrollTop = 0;
		list.dispatchEvent(new Event("scroll"));
		return [...list.querySelectorAll(".text")].some((e) => e.textContent === "m0");
	})()`)); err != nil {
		t.Fatalf("scrolling up never reached the first message: %v", err)
	}
	texts, err := chromedp.Run(tab, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#messages li[data-seq] .text")].map((e) => e.textContent)`))
	if err != nil {
		t.Fatal(err)
	}
	screenshot(t, tab, "history")
	if len(texts) != n {
		t.Fatalf("%d messages shown after scrolling to the top, want %d", len(texts), n)
	}
	for i, text := range texts {
		if text != fmt.Sprintf("m%d", i) {
			t.Fatalf("message %d is %q: out of order", i, text)
		}
	}
}
