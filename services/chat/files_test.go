package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/services/broadcaster/broadcaster"
	"github.com/natter-chat/natter/services/edge/edge"
	"github.com/natter-chat/natter/shared/auth"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/embedded"
	"github.com/natter-chat/natter/shared/files"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/servicetest"
)

// The first bytes of each kind of file the tests upload.
var (
	pngBytes  = append([]byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), bytes.Repeat([]byte{7}, 300)...)
	jpegBytes = append([]byte("\xff\xd8\xff\xe0\x00\x10JFIF\x00"), bytes.Repeat([]byte{1}, 100)...)
	gifBytes  = []byte("GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00,")
	webpBytes = []byte("RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00")
	htmlBytes = []byte("<!DOCTYPE html><html><script>alert(document.cookie)</script></html>")
	svgBytes  = []byte(`<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="9" height="9"/></svg>`)
	pdfBytes  = []byte("%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n")
)

// uploadAnswer is what POST /files answered: the file, or the refusal.
type uploadAnswer struct {
	status  int
	header  http.Header
	File    string `json:"file"`
	Name    string `json:"name"`
	Size    int64  `json:"size"`
	Type    string `json:"type"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// upload posts body to base's /files with the query (room=..., dm=...,
// user=...), the file name and the extra headers h.
func upload(t *testing.T, base, query, name string, body io.Reader, h http.Header) uploadAnswer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/files?"+query, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("X-File-Name", url.PathEscape(name))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	a := uploadAnswer{status: resp.StatusCode, header: resp.Header}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatalf("upload %s: answer %d is not JSON: %v", name, resp.StatusCode, err)
	}
	return a
}

// fetch GETs base's /files/id with the headers h, and reads the body.
func fetch(t *testing.T, base, id string, h http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/files/"+id, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// checkFileHeaders fails unless h has the headers every file answer has.
func checkFileHeaders(t *testing.T, what string, h http.Header) {
	t.Helper()
	if h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Content-Security-Policy") != "sandbox" {
		t.Errorf("%s: X-Content-Type-Options %q, Content-Security-Policy %q; want nosniff and sandbox",
			what, h.Get("X-Content-Type-Options"), h.Get("Content-Security-Policy"))
	}
}

// bucketBytes is how many bytes the file bucket's stream holds.
func bucketBytes(t *testing.T, js jetstream.JetStream) (msgs, bytes uint64) {
	t.Helper()
	s, err := js.Stream(context.Background(), "OBJ_"+files.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs, info.State.Bytes
}

// A file goes up, is shared in a room, reaches the other member in the
// message and in history, and comes back byte for byte: whole, by range,
// and not again when the browser has it (304).
func TestFileShareInRoom(t *testing.T) {
	t.Parallel()
	_, e := setup(t)
	alice, bob := dial(t, e.url, "alice"), dial(t, e.url, "bob")
	alice.join("lobby")
	bob.join("lobby")

	up := upload(t, e.url, "room=lobby&user=alice", "cat 🐈.png", bytes.NewReader(pngBytes), nil)
	if up.status != http.StatusCreated || !proto32(up.File) || up.Name != "cat 🐈.png" || up.Size != int64(len(pngBytes)) || up.Type != "image/png" {
		t.Fatalf("upload: %d %+v", up.status, up)
	}
	checkFileHeaders(t, "upload", up.header)
	seq := alice.acked(map[string]any{"type": "message", "room": "lobby", "file": up.File, "id": "f1"}, "f1")
	ev := bob.expect("message")
	want := fileRef{ID: up.File, Name: "cat 🐈.png", Size: int64(len(pngBytes)), Type: "image/png"}
	if ev.seq() != seq || ev.File == nil || *ev.File != want || ev.Text != "" {
		t.Fatalf("bob got %s, want the file %+v at seq %d", ev.raw, want, seq)
	}
	bob.send(map[string]any{"type": "history", "room": "lobby"})
	h := bob.expect("history")
	if len(h.Messages) != 1 || h.Messages[0].File == nil || *h.Messages[0].File != want {
		t.Fatalf("history %s, want the file", h.raw)
	}

	resp, body := fetch(t, e.url, up.File, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, pngBytes) {
		t.Fatalf("download: %d, %d bytes, equal %v", resp.StatusCode, len(body), bytes.Equal(body, pngBytes))
	}
	checkFileHeaders(t, "download", resp.Header)
	etag := resp.Header.Get("ETag")
	if resp.Header.Get("Content-Type") != "image/png" || !strings.HasPrefix(resp.Header.Get("Content-Disposition"), "inline") ||
		!strings.Contains(resp.Header.Get("Content-Disposition"), "filename*=utf-8''cat%20%F0%9F%90%88.png") ||
		!strings.HasPrefix(etag, `"SHA-256=`) || !strings.Contains(resp.Header.Get("Cache-Control"), "max-age=") ||
		resp.Header.Get("Accept-Ranges") != "bytes" {
		t.Errorf("download headers %v", resp.Header)
	}

	resp, body = fetch(t, e.url, up.File, http.Header{"Range": {"bytes=2-9"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, pngBytes[2:10]) ||
		resp.Header.Get("Content-Range") != "bytes 2-9/"+strconv.Itoa(len(pngBytes)) {
		t.Errorf("range 2-9: %d %q %q", resp.StatusCode, body, resp.Header.Get("Content-Range"))
	}
	checkFileHeaders(t, "range", resp.Header)
	resp, body = fetch(t, e.url, up.File, http.Header{"Range": {"bytes=-5"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, pngBytes[len(pngBytes)-5:]) {
		t.Errorf("the last 5 bytes: %d %q", resp.StatusCode, body)
	}
	resp, _ = fetch(t, e.url, up.File, http.Header{"If-None-Match": {etag}})
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", resp.StatusCode)
	}
	resp, _ = fetch(t, e.url, strings.Repeat("0", 32), nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("an unknown ID: %d, want 404", resp.StatusCode)
	}
	checkFileHeaders(t, "404", resp.Header)
}

func proto32(id string) bool { return len(id) == 32 && strings.Trim(id, "0123456789abcdef") == "" }

// A file's type is what its bytes are, whatever its name and
// Content-Type say: only the four image types are inline; an HTML page
// named .png, an SVG and a PDF are attachments of no type a browser runs.
func TestFileTypesFromTheBytes(t *testing.T) {
	t.Parallel()
	_, e := setup(t)
	for _, tc := range []struct {
		name, claims string
		data         []byte
		want         string
	}{
		{"photo.jpg", "image/jpeg", jpegBytes, "image/jpeg"},
		{"anim.gif", "image/gif", gifBytes, "image/gif"},
		{"pic.webp", "image/webp", webpBytes, "image/webp"},
		{"innocent.png", "image/png", htmlBytes, files.TypeBinary},
		{"logo.svg", "image/svg+xml", svgBytes, files.TypeBinary},
		{"paper.pdf", "application/pdf", pdfBytes, files.TypeBinary},
		{"notes.txt", "image/png", []byte("just text"), files.TypeBinary},
	} {
		up := upload(t, e.url, "room=lobby&user=alice", tc.name, bytes.NewReader(tc.data), http.Header{"Content-Type": {tc.claims}})
		if up.status != http.StatusCreated || up.Type != tc.want {
			t.Errorf("%s: %d, type %q, want %q", tc.name, up.status, up.Type, tc.want)
			continue
		}
		resp, body := fetch(t, e.url, up.File, nil)
		checkFileHeaders(t, tc.name, resp.Header)
		disp := resp.Header.Get("Content-Disposition")
		inline := tc.want != files.TypeBinary
		if resp.Header.Get("Content-Type") != tc.want || strings.HasPrefix(disp, "inline") != inline ||
			strings.HasPrefix(disp, "attachment") == inline || !bytes.Equal(body, tc.data) {
			t.Errorf("%s: served as %q, %q", tc.name, resp.Header.Get("Content-Type"), disp)
		}
	}
}

// What an upload is refused for, each with its status, and nothing left
// in the bucket by any of them.
func TestFileUploadRefusals(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	const limit = 64 << 10
	e := startEdge(t, ns, func(c *edge.Config) {
		c.Files = config.Defaults[config.Files]()
		c.Files.FileMaxBytes = limit
	})
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte{'x'}, limit+1)
	for _, tc := range []struct {
		what, query, name string
		body              io.Reader
		status            int
	}{
		{"one byte over, said by its length", "room=lobby&user=alice", "a.bin", bytes.NewReader(big), http.StatusRequestEntityTooLarge},
		{"one byte over, sent chunked", "room=lobby&user=alice", "a.bin", io.MultiReader(bytes.NewReader(big)), http.StatusRequestEntityTooLarge},
		{"empty", "room=lobby&user=alice", "a.bin", strings.NewReader(""), http.StatusBadRequest},
		{"no target", "user=alice", "a.bin", strings.NewReader("x"), http.StatusBadRequest},
		{"room and dm", "room=lobby&dm=bob&user=alice", "a.bin", strings.NewReader("x"), http.StatusBadRequest},
		{"a bad room", "room=no%20spaces&user=alice", "a.bin", strings.NewReader("x"), http.StatusBadRequest},
		{"a bad user to dm", "dm=b.o.b&user=alice", "a.bin", strings.NewReader("x"), http.StatusBadRequest},
		{"no user", "room=lobby", "a.bin", strings.NewReader("x"), http.StatusBadRequest},
		{"a path for a name", "room=lobby&user=alice", "../../etc/passwd", strings.NewReader("x"), http.StatusBadRequest},
		{"a blank name", "room=lobby&user=alice", "  ", strings.NewReader("x"), http.StatusBadRequest},
		{"a name of 256 bytes", "room=lobby&user=alice", strings.Repeat("n", 256), strings.NewReader("x"), http.StatusBadRequest},
		{"a control character", "room=lobby&user=alice", "a\x00b", strings.NewReader("x"), http.StatusBadRequest},
	} {
		up := upload(t, e.url, tc.query, tc.name, tc.body, nil)
		if up.status != tc.status || up.Code == "" || up.Message == "" {
			t.Errorf("%s: %d %+v, want %d with a code and a message", tc.what, up.status, up, tc.status)
		}
		checkFileHeaders(t, tc.what, up.header)
	}
	if msgs, n := bucketBytes(t, js); msgs != 0 {
		t.Errorf("the bucket holds %d messages (%d bytes) after refusals only", msgs, n)
	}
	// Exactly the limit is taken.
	if up := upload(t, e.url, "room=lobby&user=alice", "a.bin", bytes.NewReader(big[:limit]), nil); up.status != http.StatusCreated || up.Size != limit {
		t.Errorf("exactly the limit: %d %+v", up.status, up)
	}
}

// A full bucket refuses the upload that would pass it with 507, and what
// was stored of that upload is purged.
func TestFileBucketFull(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	fc := config.Defaults[config.Files]()
	fc.BucketMaxBytes = 1 << 20
	startBroadcasterCfg(t, connect(t, ns, "broadcaster"), broadcaster.Config{Retention: config.Defaults[config.Retention](), Replicas: 1, Files: fc})
	e := startEdge(t, ns, func(c *edge.Config) { c.Files = fc })
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	servicetest.WaitFor(t, wait, "the bucket", func() bool { _, err := js.ObjectStore(context.Background(), files.Bucket); return err == nil })
	first := upload(t, e.url, "room=lobby&user=alice", "a.bin", bytes.NewReader(bytes.Repeat([]byte{1}, 600<<10)), nil)
	if first.status != http.StatusCreated {
		t.Fatalf("the first upload: %d %+v", first.status, first)
	}
	msgs, size := bucketBytes(t, js)
	second := upload(t, e.url, "room=lobby&user=alice", "b.bin", bytes.NewReader(bytes.Repeat([]byte{2}, 600<<10)), nil)
	if second.status != http.StatusInsufficientStorage {
		t.Fatalf("past the bucket's limit: %d %+v, want 507", second.status, second)
	}
	if !servicetest.Poll(wait, func() bool { m, n := bucketBytes(t, js); return m == msgs && n == size }) {
		m, n := bucketBytes(t, js)
		t.Fatalf("the bucket holds %d messages, %d bytes after the refused upload; %d, %d before it", m, n, msgs, size)
	}
	if resp, body := fetch(t, e.url, first.File, nil); resp.StatusCode != http.StatusOK || len(body) != 600<<10 {
		t.Errorf("the first file after the refusal: %d, %d bytes", resp.StatusCode, len(body))
	}
}

// With auth: an upload needs a token (Authorization: Bearer), a room's
// file is for any valid token, a dm's for its two parties only.
func TestFileAuth(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	const secret = "a-secret-of-at-least-32-bytes-long!!"
	e := startEdge(t, ns, func(c *edge.Config) { c.Web.AuthSecret = secret })
	token := func(user string) string {
		tok, err := auth.Sign([]byte(secret), user, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	as := func(user string) http.Header { return http.Header{"Authorization": {"Bearer " + token(user)}} }

	if up := upload(t, e.url, "dm=bob&user=alice", "a.png", bytes.NewReader(pngBytes), nil); up.status != http.StatusUnauthorized {
		t.Fatalf("no token: %d, want 401", up.status)
	}
	if up := upload(t, e.url, "dm=bob", "a.png", bytes.NewReader(pngBytes), http.Header{"Authorization": {"Bearer nonsense"}}); up.status != http.StatusUnauthorized {
		t.Fatalf("a bad token: %d, want 401", up.status)
	}
	dm := upload(t, e.url, "dm=bob", "a.png", bytes.NewReader(pngBytes), as("alice"))
	room := upload(t, e.url, "room=lobby", "b.png", bytes.NewReader(pngBytes), as("alice"))
	if dm.status != http.StatusCreated || room.status != http.StatusCreated {
		t.Fatalf("uploads with a token: %d, %d", dm.status, room.status)
	}
	for _, tc := range []struct {
		what, id string
		h        http.Header
		status   int
	}{
		{"the dm's file, no token", dm.File, nil, http.StatusUnauthorized},
		{"the dm's file to carol", dm.File, as("carol"), http.StatusForbidden},
		{"the dm's file to alice", dm.File, as("alice"), http.StatusOK},
		{"the dm's file to bob", dm.File, as("bob"), http.StatusOK},
		{"the room's file, no token", room.File, nil, http.StatusUnauthorized},
		{"the room's file to carol", room.File, as("carol"), http.StatusOK},
	} {
		resp, _ := fetch(t, e.url, tc.id, tc.h)
		if resp.StatusCode != tc.status {
			t.Errorf("%s: %d, want %d", tc.what, resp.StatusCode, tc.status)
		}
		checkFileHeaders(t, tc.what, resp.Header)
	}
	// ?token= works for a download, as an <img> cannot send a header.
	if resp, _ := fetch(t, e.url, dm.File+"?token="+token("bob"), nil); resp.StatusCode != http.StatusOK {
		t.Errorf("the dm's file to bob by ?token=: %d", resp.StatusCode)
	}
}

// A share is refused unless its user uploaded the file for where it is
// shared; the refusals are bad_request, the accepted share of a dm's
// file reaches both parties.
func TestFileShareRefusals(t *testing.T) {
	t.Parallel()
	_, e := setup(t)
	alice, bob := dial(t, e.url, "alice"), dial(t, e.url, "bob")
	alice.join("lobby")
	alice.join("other")
	bob.join("lobby")
	lobby := upload(t, e.url, "room=lobby&user=alice", "a.png", bytes.NewReader(pngBytes), nil)
	dm := upload(t, e.url, "dm=bob&user=alice", "b.pdf", bytes.NewReader(pdfBytes), nil)
	refused := func(c *wsClient, req map[string]any, why string) {
		t.Helper()
		c.send(req)
		if ev := c.expect("error"); ev.Code != "bad_request" || ev.id() != req["id"] {
			t.Errorf("%s: %s, want bad_request", why, ev.raw)
		}
	}
	refused(bob, map[string]any{"type": "message", "room": "lobby", "file": lobby.File, "id": "1"}, "someone else's file")
	refused(alice, map[string]any{"type": "message", "room": "other", "file": lobby.File, "id": "2"}, "another room's file")
	refused(alice, map[string]any{"type": "message", "room": "lobby", "file": dm.File, "id": "3"}, "a dm's file in a room")
	refused(alice, map[string]any{"type": "dm", "to": "carol", "file": dm.File, "id": "4"}, "a dm's file to someone else")
	refused(alice, map[string]any{"type": "message", "room": "lobby", "file": strings.Repeat("ab", 16), "id": "5"}, "a file that is not there")
	refused(alice, map[string]any{"type": "message", "room": "lobby", "file": "../x", "id": "6"}, "not a file ID")

	alice.acked(map[string]any{"type": "dm", "to": "bob", "text": "the paper", "file": dm.File, "id": "7"}, "7")
	want := fileRef{ID: dm.File, Name: "b.pdf", Size: int64(len(pdfBytes)), Type: files.TypeBinary}
	if ev := bob.expect("dm"); ev.File == nil || *ev.File != want || ev.Text != "the paper" {
		t.Fatalf("bob got %s, want the pdf", ev.raw)
	}
}

// An upload never shared is deleted once CHAT_FILES_UNSHARED_TTL (and a
// grace of half of it) has passed; a shared one is kept.
func TestUnsharedUploadsDeleted(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	fc := config.Defaults[config.Files]()
	fc.UnsharedTTL = 300 * time.Millisecond
	reg := startBroadcasterCfg(t, connect(t, ns, "broadcaster"), broadcaster.Config{Retention: config.Defaults[config.Retention](), Replicas: 1, Files: fc})
	e := startEdge(t, ns, nil)
	alice := dial(t, e.url, "alice")
	alice.join("lobby")
	shared := upload(t, e.url, "room=lobby&user=alice", "kept.png", bytes.NewReader(pngBytes), nil)
	unshared := upload(t, e.url, "room=lobby&user=alice", "gone.png", bytes.NewReader(pngBytes), nil)
	alice.acked(map[string]any{"type": "message", "room": "lobby", "file": shared.File, "id": "1"}, "1")
	servicetest.WaitFor(t, wait, "the unshared upload deleted", func() bool {
		resp, _ := fetch(t, e.url, unshared.File, nil)
		return resp.StatusCode == http.StatusNotFound
	})
	if resp, _ := fetch(t, e.url, shared.File, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("the shared file: %d, want 200", resp.StatusCode)
	}
	if n := counter(t, reg, "natter_broadcaster_files_swept_total"); n != 1 {
		t.Errorf("swept %v, want 1", n)
	}
	// Too late to share it now.
	alice.expect("message") // the echo of the first
	alice.send(map[string]any{"type": "message", "room": "lobby", "file": unshared.File, "id": "2"})
	if ev := alice.expect("error"); ev.Code != "bad_request" {
		t.Errorf("sharing the deleted upload: %s", ev.raw)
	}
}

// Without NATS an upload is 503 and a download too; nothing is half
// stored, and both work again once NATS is back.
func TestFilesWithoutNATS(t *testing.T) {
	dir := t.TempDir()
	ns, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addr := embedded.Addr(ns)
	t.Cleanup(func() { embedded.Stop(ns) })
	startBroadcaster(t, ns)
	e := startEdge(t, ns, nil)
	before := upload(t, e.url, "room=lobby&user=alice", "a.png", bytes.NewReader(pngBytes), nil)
	if before.status != http.StatusCreated {
		t.Fatalf("before: %d", before.status)
	}
	embedded.Stop(ns)
	servicetest.WaitFor(t, wait, "readyz 503", func() bool { code, _ := get(t, e.url+"/readyz"); return code == http.StatusServiceUnavailable })
	if up := upload(t, e.url, "room=lobby&user=alice", "b.png", bytes.NewReader(pngBytes), nil); up.status != http.StatusServiceUnavailable {
		t.Errorf("upload without NATS: %d, want 503", up.status)
	}
	if resp, _ := fetch(t, e.url, before.File, nil); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("download without NATS: %d, want 503", resp.StatusCode)
	}

	ns, err = embedded.Start(embedded.Options{Addr: addr, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { embedded.Stop(ns) })
	servicetest.WaitFor(t, wait, "readyz 200", func() bool { code, _ := get(t, e.url+"/readyz"); return code == http.StatusOK })
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	obs, err := js.ObjectStore(context.Background(), files.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	list, err := obs.List(context.Background())
	if err != nil || len(list) != 1 || list[0].Name != before.File {
		t.Fatalf("the bucket after the outage: %v, %v; want only the file uploaded before", list, err)
	}
	if resp, body := fetch(t, e.url, before.File, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, pngBytes) {
		t.Errorf("download after the outage: %d", resp.StatusCode)
	}
	if up := upload(t, e.url, "room=lobby&user=alice", "c.png", bytes.NewReader(pngBytes), nil); up.status != http.StatusCreated {
		t.Errorf("upload after the outage: %d", up.status)
	}
}

// A 9 MiB file goes up and comes back equal, streamed both ways: its
// bytes are made as they are sent and hashed as they come back.
func TestFileLargeRoundTrip(t *testing.T) {
	t.Parallel()
	_, e := setup(t)
	const size = 9 << 20
	sent := sha256.New()
	body := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1}), size), sent)
	up := upload(t, e.url, "room=lobby&user=alice", "big.bin", body, nil)
	if up.status != http.StatusCreated || up.Size != size {
		t.Fatalf("upload: %d %+v", up.status, up)
	}
	resp, err := http.Get(e.url + "/files/" + up.File)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := sha256.New()
	n, err := io.Copy(got, resp.Body)
	if err != nil || n != size || !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		t.Fatalf("download: %d bytes, %v, equal %v", n, err, bytes.Equal(got.Sum(nil), sent.Sum(nil)))
	}
}

// liveOutsideServer is what the heap holds now, after two collections,
// in objects whose allocation stack has no frame of the NATS server: the
// edge's (and the rest of natter's, and nats.go's) share of the heap,
// where the embedded server's block buffers and caches hold the file's
// bytes whatever the edge does. Only the objects allocated since
// runtime.MemProfileRate was lowered are all counted.
func liveOutsideServer() int64 {
	runtime.GC()
	runtime.GC()
	n, _ := runtime.MemProfile(nil, false)
	recs := make([]runtime.MemProfileRecord, n+100)
	n, _ = runtime.MemProfile(recs, false)
	var live int64
	for _, r := range recs[:n] {
		if r.InUseBytes() == 0 {
			continue
		}
		frames := runtime.CallersFrames(r.Stack())
		server := false
		for {
			f, more := frames.Next()
			if strings.HasPrefix(f.Function, "github.com/nats-io/nats-server/") {
				server = true
				break
			}
			if !more {
				break
			}
		}
		if !server {
			live += r.InUseBytes()
		}
	}
	return live
}

// at calls f once, when n bytes have passed through it: as a reader, a
// writer, or both.
type at struct {
	r    io.Reader
	n    int64
	f    func()
	seen int64
}

func (a *at) count(n int) {
	before := a.seen
	a.seen += int64(n)
	if before < a.n && a.seen >= a.n {
		a.f()
	}
}

func (a *at) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	a.count(n)
	return n, err
}

func (a *at) Write(p []byte) (int, error) {
	a.count(len(p))
	return len(p), nil
}

// The edge streams an upload into the bucket and a download out of it:
// into a file of 9 MiB (8 MiB into the upload, 1 MiB into the download),
// what the heap holds outside the NATS server has not grown by more than
// 5 MiB (it would have grown by 8 or 9 to hold the file; a download's
// window is about 2.5 MiB: the chunks nats.go's consumer has taken ahead
// of the client). Not parallel: it samples
// every allocation of the process for a while.
func TestFileMemoryDoesNotFollowSize(t *testing.T) {
	_, e := setup(t)
	old := runtime.MemProfileRate
	runtime.MemProfileRate = 512
	t.Cleanup(func() { runtime.MemProfileRate = old })
	const size, mid = 9 << 20, 8 << 20
	base := liveOutsideServer()
	var upHeld, downHeld int64
	body := &at{r: io.LimitReader(rand.NewChaCha8([32]byte{2}), size), n: mid, f: func() { upHeld = liveOutsideServer() - base }}
	up := upload(t, e.url, "room=lobby&user=alice", "f.bin", body, nil)
	if up.status != http.StatusCreated {
		t.Fatalf("upload: %d", up.status)
	}
	base = liveOutsideServer()
	resp, err := http.Get(e.url + "/files/" + up.File)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// Measured a MiB in: the client reading is what lets the edge go on,
	// and loopback's socket buffers could take the last MiBs of a file
	// the edge had read whole.
	n, err := io.Copy(&at{n: 1 << 20, f: func() { downHeld = liveOutsideServer() - base }}, resp.Body)
	if err != nil || n != size {
		t.Fatalf("download: %d bytes, %v", n, err)
	}
	t.Logf("held outside the NATS server, of a 9 MiB file: %.2f MiB 8 MiB into its upload, %.2f MiB 1 MiB into its download",
		float64(upHeld)/(1<<20), float64(downHeld)/(1<<20))
	if upHeld > 5<<20 || downHeld > 5<<20 {
		t.Errorf("the edge holds %.1f MiB of an upload, %.1f MiB of a download: the file, not a window of it",
			float64(upHeld)/(1<<20), float64(downHeld)/(1<<20))
	}
}

// Two edges on one NATS, as the process mesh runs them: a file uploaded
// through one is shared there, reaches a member on the other, and is
// read back through the other.
func TestFileAcrossEdges(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	e1, e2 := startEdge(t, ns, nil), startEdge(t, ns, nil)
	alice, bob := dial(t, e1.url, "alice"), dial(t, e2.url, "bob")
	alice.join("lobby")
	bob.join("lobby")
	up := upload(t, e1.url, "room=lobby&user=alice", "a.png", bytes.NewReader(pngBytes), nil)
	if up.status != http.StatusCreated {
		t.Fatalf("upload through the first edge: %d", up.status)
	}
	alice.acked(map[string]any{"type": "message", "room": "lobby", "file": up.File, "id": "1"}, "1")
	if ev := bob.expect("message"); ev.File == nil || ev.File.ID != up.File {
		t.Fatalf("bob, on the second edge: %s", ev.raw)
	}
	if resp, body := fetch(t, e2.url, up.File, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, pngBytes) {
		t.Fatalf("download through the second edge: %d", resp.StatusCode)
	}
}

// An upload is admitted as a WebSocket is: a foreign Origin is 403, an
// address at its limit of open connections 429, each before a byte of
// the body is read, and nothing is stored.
func TestFileUploadAdmission(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	e := startEdge(t, ns, func(c *edge.Config) { c.Web.MaxConnsPerIP = 1 })
	if up := upload(t, e.url, "room=lobby&user=alice", "a.png", bytes.NewReader(pngBytes), http.Header{"Origin": {"http://evil.example"}}); up.status != http.StatusForbidden {
		t.Errorf("a foreign Origin: %d, want 403", up.status)
	}
	dial(t, e.url, "alice") // the address's one place
	if up := upload(t, e.url, "room=lobby&user=alice", "a.png", bytes.NewReader(pngBytes), nil); up.status != http.StatusTooManyRequests {
		t.Errorf("an address at its limit: %d, want 429", up.status)
	}
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	if msgs, _ := bucketBytes(t, js); msgs != 0 {
		t.Errorf("the bucket holds %d messages after refusals only", msgs)
	}
}
