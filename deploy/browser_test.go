package deploy

import (
	"context"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/natter-chat/natter/shared/browsertest"
	"github.com/natter-chat/natter/shared/servicetest"
)

// Two pages opened on the proxy's port land on different edges (the
// test asks NATS which), chat, see each other's presence and share a
// picture.
func browsersThroughMesh(t *testing.T, m *mesh) {
	newTab := browsertest.Start(t)
	edges := watchEdges(t, natsClient(t, m, "observer"))
	tabs := map[string]context.Context{}
	for _, user := range []string{"ann", "ben"} {
		tabs[user] = newTab()
		browsertest.Run(t, tabs[user], "open "+user+"'s page",
			chromedp.Navigate(m.httpURL()+"/?user="+user+"&room=lobby"),
			chromedp.WaitVisible(browsertest.Online))
		servicetest.WaitFor(t, 10*time.Second, user+"'s edge known", func() bool { return edges.ofUser(user) != "" })
	}
	if a, b := edges.ofUser("ann"), edges.ofUser("ben"); a == b {
		t.Errorf("both pages are on %s; the proxy should have given the second the other edge", a)
	} else {
		t.Logf("ann is on %s, ben on %s", a, b)
	}
	browsertest.Run(t, tabs["ann"], "ann sees ben", chromedp.WaitVisible(browsertest.Member("ben")))
	browsertest.Run(t, tabs["ben"], "ben sees ann", chromedp.WaitVisible(browsertest.Member("ann")))
	browsertest.Run(t, tabs["ann"], "ann writes",
		chromedp.SendKeys(chromedp.ID("text"), "hello across the edges"), browsertest.Enter(),
		chromedp.WaitVisible(browsertest.TextShown("hello across the edges")))
	browsertest.Run(t, tabs["ben"], "ben reads and answers",
		chromedp.WaitVisible(browsertest.TextShown("hello across the edges")),
		chromedp.SendKeys(chromedp.ID("text"), "and back"), browsertest.Enter())
	browsertest.Run(t, tabs["ann"], "ann reads the answer", chromedp.WaitVisible(browsertest.TextShown("and back")))

	// A picture through the proxy: up through ann's edge, stored in the
	// cluster's bucket (three replicas), drawn on ben's page.
	browsertest.Run(t, tabs["ann"], "ann drops a picture",
		browsertest.DropFile("mesh.png", "image/png", browsertest.PNG(40, 30)),
		chromedp.WaitVisible(browsertest.Thumb("mesh.png")))
	browsertest.Run(t, tabs["ben"], "ben sees it", chromedp.WaitVisible(browsertest.Thumb("mesh.png")))
	tctx, cancel := context.WithTimeout(tabs["ben"], 20*time.Second)
	defer cancel()
	if w, err := chromedp.Run(tctx, chromedp.Evaluate[int](browsertest.DrawnWidth, chromedp.EvalAwaitPromise)); err != nil || w != 40 {
		t.Errorf("ben's page drew the picture %d px wide, want 40 (%v)", w, err)
	}
}
