// Package browsertest drives the real page in headless Chromium for
// end-to-end tests, through chromedp, and names the page's parts the
// tests look for. Without a browser the tests skip and
// say how to install one, except under CI=true, where .ci/run has
// installed it and its absence is a failure.
package browsertest

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
)

// Chromium returns the path of the browser, or skips the test (fails it
// under CI=true) when there is none.
func Chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	const how = "no Chromium found; install it with: apt-get install chromium (Debian)"
	if os.Getenv("CI") == "true" {
		t.Fatal(how)
	}
	t.Skip(how)
	return ""
}

// Start starts a headless Chromium with a fresh profile, stopped when the
// test ends; each call of the returned function opens a new tab in a
// browser context of its own (its own storage, like a separate person).
func Start(t testing.TB) func() context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(Chromium(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1000, 700),
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	root, cancelRoot := chromedp.NewContext(alloc)
	if err := chromedp.Do(root); err != nil { // starts the browser
		cancelRoot()
		cancelAlloc()
		t.Fatalf("starting chromium: %v", err)
	}
	t.Cleanup(func() {
		cancelRoot()
		cancelAlloc()
	})
	return func() context.Context {
		tab, cancel := chromedp.NewContext(root, chromedp.WithNewBrowserContext())
		t.Cleanup(cancel)
		// The first run opens the tab, which lives as long as the context
		// of that run: it must not be one with a timeout.
		if err := chromedp.Do(tab); err != nil {
			t.Fatalf("opening a tab: %v", err)
		}
		return tab
	}
}

// Run does actions in a tab within 20 s, failing the test with what.
func Run(t testing.TB, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(tctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// Enter presses Enter as a person does. chromedp's SendKeys adds a char
// event that Chrome applies even when the keydown handler cancelled it,
// which would leave a newline in the cleared composer.
func Enter() chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		for _, typ := range []input.DispatchKeyEventType{input.DispatchKeyEventTypeRawKeyDown, input.DispatchKeyEventTypeKeyUp} {
			_, err := cdp.Call(ctx, t, input.DispatchKeyEvent, input.DispatchKeyEventParams{
				Type: typ, Key: "Enter", Code: "Enter", WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13,
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// Online is the XPath of the page's status once it is connected.
const Online = `//span[@id="status" and text()="online"]`

// Member is the XPath of a user in the member list (a button that
// starts a conversation).
func Member(user string) string {
	return `//ul[@id="member-list"]/li/button[text()=` + xpathString(user) + `]`
}

// TextShown is the XPath of a message text in the list.
func TextShown(text string) string {
	return `//ol[@id="messages"]//span[@class="text" and text()=` + xpathString(text) + `]`
}

func xpathString(s string) string { return `"` + s + `"` }

// DropFile drops a file of the given name, type and bytes on the page's
// conversation, as a person dragging it from their desktop does.
func DropFile(name, typ string, data []byte) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => {
		const bytes = Uint8Array.from(atob(%q), (c) => c.charCodeAt(0));
		const dt = new DataTransfer();
		dt.items.add(new File([bytes], %q, { type: %q }));
		const main = document.querySelector("main");
		main.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
		main.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
	})()`, base64.StdEncoding.EncodeToString(data), name, typ))
}

// PasteFile pastes a file into the composer, as a screenshot copied to
// the clipboard is pasted.
func PasteFile(name, typ string, data []byte) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => {
		const bytes = Uint8Array.from(atob(%q), (c) => c.charCodeAt(0));
		const dt = new DataTransfer();
		dt.items.add(new File([bytes], %q, { type: %q }));
		document.getElementById("text").dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
	})()`, base64.StdEncoding.EncodeToString(data), name, typ))
}

// Thumb is the XPath of an image shared in the list, by its name.
func Thumb(name string) string {
	return `//ol[@id="messages"]//a[@class="thumb-link"]/img[@class="thumb" and @alt=` + xpathString(name) + `]`
}

// DrawnWidth is a script giving the natural width of the first shared
// image of the list once it has loaded (0 if it cannot be drawn); run it
// with chromedp.EvalAwaitPromise.
const DrawnWidth = `(async () => {
	const img = document.querySelector("#messages img.thumb");
	if (!img.complete) await new Promise((r) => { img.addEventListener("load", r, { once: true }); img.addEventListener("error", r, { once: true }); });
	return img.naturalWidth;
})()`

// PNG is a real PNG of w x h pixels, so that a browser draws it.
func PNG(w, h int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for x := range w {
		for y := range h {
			img.Set(x, y, color.RGBA{uint8(6 * x), uint8(8 * y), 200, 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		panic("browsertest: encoding a PNG: " + err.Error()) // an in-memory image always encodes
	}
	return b.Bytes()
}
