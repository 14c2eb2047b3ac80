package servicetest

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Ask sends verb (micro.PingVerb, InfoVerb or StatsVerb) to the NATS
// services named name (every service when name is empty; one instance
// when id is set too), as `nats micro` does, and returns the answers
// decoded into T once want of them have come. It fails the test when
// fewer come within wait, or when more than want have come by the time a
// round trip to the server after the last one returns.
func Ask[T any](t *testing.T, nc *nats.Conn, verb micro.Verb, name, id string, want int, wait time.Duration) []T {
	t.Helper()
	subj, err := micro.ControlSubject(verb, name, id)
	if err != nil {
		t.Fatal(err)
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subj, inbox, nil); err != nil {
		t.Fatal(err)
	}
	var got []T
	deadline := time.Now().Add(wait)
	for len(got) < want {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("%s: %d answers of %d: %v", subj, len(got), want, err)
		}
		var v T
		if err := json.Unmarshal(m.Data, &v); err != nil {
			t.Fatalf("%s: answer %s: %v", subj, m.Data, err)
		}
		got = append(got, v)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := sub.Pending(); n > 0 {
		t.Errorf("%s: %d answers, want %d", subj, want+n, want)
	}
	return got
}

// StatsData decodes the service's own figures from a stats answer: the
// data of its first endpoint (natter's services give each endpoint the
// same).
func StatsData[T any](t *testing.T, s micro.Stats) T {
	t.Helper()
	var v T
	if len(s.Endpoints) == 0 {
		t.Fatalf("%s %s: a stats answer without endpoints", s.Name, s.ID)
	}
	if err := json.Unmarshal(s.Endpoints[0].Data, &v); err != nil {
		t.Fatalf("%s %s: stats data %s: %v", s.Name, s.ID, s.Endpoints[0].Data, err)
	}
	return v
}
