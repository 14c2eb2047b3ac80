package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"testing"

	"github.com/chromedp/chromedp"
)

// dropFile drops a file of the given bytes on the page's conversation, as
// a person dragging it from their desktop does.
func dropFile(name, typ string, data []byte) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => {
		const bytes = Uint8Array.from(atob(%q), (c) => c.charCodeAt(0));
		const dt = new DataTransfer();
		dt.items.add(new File([bytes], %q, { type: %q }));
		const main = document.querySelector("main");
		main.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
		main.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
	})()`, base64.StdEncoding.EncodeToString(data), name, typ))
}

// pasteFile pastes a file into the composer, as a screenshot copied to
// the clipboard is pasted.
func pasteFile(name, typ string, data []byte) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => {
		const bytes = Uint8Array.from(atob(%q), (c) => c.charCodeAt(0));
		const dt = new DataTransfer();
		dt.items.add(new File([bytes], %q, { type: %q }));
		document.getElementById("text").dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
	})()`, base64.StdEncoding.EncodeToString(data), name, typ))
}

// watchProgress notes, on the page, whether a progress bar was ever
// shown for an upload, however briefly.
const watchProgress = `(window.__sawProgress = false,
	new MutationObserver(() => { if (document.querySelector("#uploads progress")) window.__sawProgress = true; })
		.observe(document.getElementById("uploads"), { childList: true, subtree: true }), true)`

// testPNG is a real 40x30 PNG, so that the browser draws it.
func testPNG(t *testing.T) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 40, 30))
	for x := range 40 {
		for y := range 30 {
			img.Set(x, y, color.RGBA{uint8(6 * x), uint8(8 * y), 200, 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

const (
	thumbShown = `//ol[@id="messages"]//a[@class="thumb-link"]/img[@class="thumb" and @alt="cat.png"]`
	pdfChip    = `//ol[@id="messages"]//a[@class="file-chip" and @download="paper.pdf" and starts-with(text(), "📄 paper.pdf · ")]`
)

// Files in the page: alice drops an image (a progress bar shows while it
// goes up) and bob sees it inline, drawn; a PDF shows as a chip that
// downloads it; a file over the server's limit is refused before it goes
// up, with a line saying why; after a reload both files are there again,
// from history. A file dropped while the server is away waits, says so,
// and goes up once the page is connected again.
func TestBrowserFiles(t *testing.T) {
	newTab := browser(t)
	dir := t.TempDir()
	small := func(c *Config) { c.FileMaxBytes = 64 << 10 }
	m, stop := startMainWith(t, dir, small)
	addr := m.Addr()
	base := "http://" + addr
	alice, bob := newTab(), newTab()
	run1(t, alice, "open alice's page", chromedp.Navigate(base+"/?user=alice&room=lobby"), chromedp.WaitVisible(online))
	run1(t, bob, "open bob's page", chromedp.Navigate(base+"/?user=bob&room=lobby"), chromedp.WaitVisible(online))
	run1(t, alice, "alice sees bob", chromedp.WaitVisible(member("bob")))

	if _, err := chromedp.Run(alice, chromedp.Evaluate[bool](watchProgress)); err != nil {
		t.Fatal(err)
	}
	run1(t, alice, "alice drops an image", dropFile("cat.png", "image/png", testPNG(t)), chromedp.WaitVisible(thumbShown))
	saw, err := chromedp.Run(alice, chromedp.Evaluate[bool](`window.__sawProgress`))
	if err != nil || !saw {
		t.Errorf("no progress bar was shown while the image went up (%v)", err)
	}
	run1(t, bob, "bob sees the image inline", chromedp.WaitVisible(thumbShown))
	width, err := chromedp.Run(bob, chromedp.Evaluate[int](`(async () => {
		const img = document.querySelector("#messages img.thumb");
		if (!img.complete) await new Promise((r) => img.addEventListener("load", r, { once: true }));
		return img.naturalWidth;
	})()`, chromedp.EvalAwaitPromise))
	if err != nil || width != 40 {
		t.Errorf("the image drawn %d px wide, want 40 (%v)", width, err)
	}

	const pasted = `//ol[@id="messages"]//img[@class="thumb" and @alt="screenshot.png"]`
	run1(t, alice, "alice pastes an image", pasteFile("screenshot.png", "image/png", testPNG(t)), chromedp.WaitVisible(pasted))
	run1(t, bob, "bob sees the pasted image", chromedp.WaitVisible(pasted))
	run1(t, alice, "alice drops a PDF", dropFile("paper.pdf", "application/pdf", pdfBytes), chromedp.WaitVisible(pdfChip))
	run1(t, bob, "bob sees the PDF as a chip", chromedp.WaitVisible(pdfChip))

	big := bytes.Repeat([]byte{'x'}, 64<<10+1)
	run1(t, alice, "alice drops a file over the limit",
		dropFile("big.bin", "application/octet-stream", big),
		chromedp.WaitVisible(`//ol[@id="messages"]/li[@class="system" and text()='"big.bin" was not sent: it is 65,537 bytes, more than the 65,536 bytes a file may be']`))
	screenshot(t, bob, "files")

	run1(t, bob, "bob reloads", chromedp.Reload(), chromedp.WaitVisible(online),
		chromedp.WaitVisible(thumbShown), chromedp.WaitVisible(pdfChip))

	stop()
	run1(t, alice, "alice's page notices the server gone", chromedp.WaitNotPresent(online))
	const later = `//ol[@id="messages"]//a[@class="file-chip" and @download="later.txt"]`
	run1(t, alice, "alice drops a file while offline",
		dropFile("later.txt", "text/plain", []byte("written on the train")),
		chromedp.WaitVisible(`//ul[@id="uploads"]/li[span[@class="note-text" and text()="waiting for the connection"]]`))
	startMainWith(t, dir, func(c *Config) { small(c); c.HTTPAddr = addr })
	run1(t, alice, "it goes up once the page is back", chromedp.WaitVisible(online), chromedp.WaitVisible(later),
		chromedp.WaitNotPresent(`//ul[@id="uploads"]/li`))
	run1(t, bob, "bob gets it", chromedp.WaitVisible(later))
}
