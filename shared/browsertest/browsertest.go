// Package browsertest drives the real page in headless Chromium for
// end-to-end tests, through chromedp, and names the page's parts the
// tests look for. Without a browser the tests skip and
// say how to install one, except under CI=true, where .ci/run has
// installed it and its absence is a failure.
package browsertest

import (
	"context"
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
