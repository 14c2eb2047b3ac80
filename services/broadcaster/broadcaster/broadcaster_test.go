package broadcaster

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natsconn"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/subject"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The broadcaster validates every post itself, answers requests with the
// stored seq or the error code, and stops cleanly.
func TestValidatesAndAnswers(t *testing.T) {
	ns := natstest.Start(t)
	nc, err := natsconn.Connect(ns.ClientURL(), "broadcaster", time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer natsconn.Drain(nc)
	b, err := New(Config{Retention: config.Retention{MaxMsgs: 100, MaxAge: time.Hour, MaxBytes: 1 << 20}}, nc,
		slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()

	client := natstest.Connect(t, ns)
	ask := func(subj, body string) proto.PostReply {
		t.Helper()
		var r proto.PostReply
		// The first requests may race the broadcaster's subscription.
		deadline := time.Now().Add(10 * time.Second)
		for {
			m, err := client.Request(subj, []byte(body), 5*time.Second)
			if err == nil {
				if err := json.Unmarshal(m.Data, &r); err != nil {
					t.Fatal(err)
				}
				return r
			}
			if time.Now().After(deadline) {
				t.Fatalf("request %s: %v", subj, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	tests := []struct {
		subj, body, code string
	}{
		{subject.InRoom("lobby"), `{"from":"alice","text":"hi","id":"1","edge":"e","session":"s"}`, ""},
		{subject.InRoom("lobby"), `{"from":"alice","text":"hi again","id":"1"}`, ""}, // duplicate
		{subject.InRoom("Lobby"), `{"from":"alice","text":"hi"}`, proto.CodeInvalidRoom},
		{subject.InRoom("lobby") + ".deep", `{"from":"alice","text":"hi"}`, proto.CodeInvalidRoom},
		{subject.InRoom("lobby"), `not json`, proto.CodeBadRequest},
		{subject.InRoom("lobby"), `{"room":"other","from":"alice","text":"hi"}`, proto.CodeBadRequest},
		{subject.InRoom("lobby"), `{"from":"al ice","text":"hi"}`, proto.CodeInvalidUser},
		{subject.InRoom("lobby"), `{"text":"hi"}`, proto.CodeInvalidUser},
		{subject.InRoom("lobby"), `{"from":"alice","text":"  "}`, proto.CodeBadRequest},
		{subject.InRoom("lobby"), `{"from":"alice","text":"` + strings.Repeat("x", 4001) + `"}`, proto.CodeTooLong},
		{subject.InRoom("lobby"), `{"from":"alice","text":"x","id":"` + strings.Repeat("i", 65) + `"}`, proto.CodeTooLong},
	}
	var first uint64
	for i, tt := range tests {
		r := ask(tt.subj, tt.body)
		if r.Code != tt.code {
			t.Errorf("%s %s: code %q, want %q", tt.subj, tt.body, r.Code, tt.code)
		}
		switch i {
		case 0:
			first = r.Seq
		case 1:
			if r.Seq != first || !r.Duplicate {
				t.Errorf("duplicate answered %+v, want seq %d", r, first)
			}
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
