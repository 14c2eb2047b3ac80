package main

import (
	"bytes"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/natter-chat/natter/shared/browsertest"
)

// watchProgress notes, on the page, whether a progress bar was ever
// shown for an upload, however briefly.
const watchProgress = `(window.__sawProgress = false,
	new MutationObserver(() => { if (document.querySelector("#uploads progress")) window.__sawProgress = true; })
		.observe(document.getElementById("uploads"), { childList: true, subtree: true }), true)`

var thumbShown = browsertest.Thumb("cat.png")

const pdfChip = `//ol[@id="messages"]//a[@class="file-chip" and @download="paper.pdf" and starts-with(text(), "📄 paper.pdf · ")]`

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
	run1(t, alice, "alice drops an image", browsertest.DropFile("cat.png", "image/png", browsertest.PNG(40, 30)), chromedp.WaitVisible(thumbShown))
	saw, err := chromedp.Run(alice, chromedp.Evaluate[bool](`window.__sawProgress`))
	if err != nil || !saw {
		t.Errorf("no progress bar was shown while the image went up (%v)", err)
	}
	run1(t, bob, "bob sees the image inline", chromedp.WaitVisible(thumbShown))
	width, err := chromedp.Run(bob, chromedp.Evaluate[int](browsertest.DrawnWidth, chromedp.EvalAwaitPromise))
	if err != nil || width != 40 {
		t.Errorf("the image drawn %d px wide, want 40 (%v)", width, err)
	}

	pasted := browsertest.Thumb("screenshot.png")
	run1(t, alice, "alice pastes an image", browsertest.PasteFile("screenshot.png", "image/png", browsertest.PNG(40, 30)), chromedp.WaitVisible(pasted))
	run1(t, bob, "bob sees the pasted image", chromedp.WaitVisible(pasted))
	run1(t, alice, "alice drops a PDF", browsertest.DropFile("paper.pdf", "application/pdf", pdfBytes), chromedp.WaitVisible(pdfChip))
	run1(t, bob, "bob sees the PDF as a chip", chromedp.WaitVisible(pdfChip))

	big := bytes.Repeat([]byte{'x'}, 64<<10+1)
	run1(t, alice, "alice drops a file over the limit",
		browsertest.DropFile("big.bin", "application/octet-stream", big),
		chromedp.WaitVisible(`//ol[@id="messages"]/li[@class="system" and text()='"big.bin" was not sent: it is 65,537 bytes, more than the 65,536 bytes a file may be']`))
	screenshot(t, bob, "files")

	run1(t, bob, "bob reloads", chromedp.Reload(), chromedp.WaitVisible(online),
		chromedp.WaitVisible(thumbShown), chromedp.WaitVisible(pdfChip))

	stop()
	run1(t, alice, "alice's page notices the server gone", chromedp.WaitNotPresent(online))
	const later = `//ol[@id="messages"]//a[@class="file-chip" and @download="later.txt"]`
	run1(t, alice, "alice drops a file while offline",
		browsertest.DropFile("later.txt", "text/plain", []byte("written on the train")),
		chromedp.WaitVisible(`//ul[@id="uploads"]/li[span[@class="note-text" and text()="waiting for the connection"]]`))
	startMainWith(t, dir, func(c *Config) { small(c); c.HTTPAddr = addr })
	run1(t, alice, "it goes up once the page is back", chromedp.WaitVisible(online), chromedp.WaitVisible(later),
		chromedp.WaitNotPresent(`//ul[@id="uploads"]/li`))
	run1(t, bob, "bob gets it", chromedp.WaitVisible(later))
}
