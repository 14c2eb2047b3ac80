package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/subject"
)

// The single binary refuses at start, naming the setting: fewer than one
// replica; more than one with its embedded server, before starting it;
// more than an external server can hold.
func TestReplicasRefusedAtStart(t *testing.T) {
	external := natstest.Start(t).ClientURL()
	tests := []struct {
		name, replicas, url, want string
	}{
		{"none", "0", "", "CHAT_STREAM_REPLICAS=0"},
		{"negative", "-1", external, "CHAT_STREAM_REPLICAS=-1"},
		{"embedded", "3", "", "CHAT_STREAM_REPLICAS=3 but the embedded NATS server is one server"},
		{"single external server", "2", external, "CHAT_STREAM_REPLICAS=2 but the NATS server is not in a cluster"},
		{"more than JetStream keeps", "6", external, "CHAT_STREAM_REPLICAS=6: JetStream keeps at most 5 copies"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			t.Setenv("CHAT_STREAM_REPLICAS", tt.replicas)
			t.Setenv("CHAT_NATS_URL", tt.url)
			t.Setenv("CHAT_HTTP_ADDR", "127.0.0.1:0")
			t.Setenv("CHAT_NATS_ADDR", "127.0.0.1:0")
			t.Setenv("CHAT_DATA_DIR", data)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			began := time.Now()
			err := run(ctx, nil, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run returned %v, want %q", err, tt.want)
			}
			if took := time.Since(began); took > 3*time.Second {
				t.Errorf("refused after %v", took)
			}
			if _, err := os.Stat(data); !os.IsNotExist(err) {
				t.Errorf("the embedded server ran on %s (%v)", data, err)
			}
		})
	}
}

// Against a cluster of three with three replicas, the single binary
// keeps both streams and the presence bucket three times and chats. Not
// parallel: a JetStream cluster elects its leaders on timers, which a
// busy CPU makes late.
func TestReplicasOnACluster(t *testing.T) {
	c := natstest.StartCluster(t, 3)
	m, _ := startMainWith(t, t.TempDir(), func(cfg *Config) {
		cfg.URL = c.URL()
		cfg.Replicas = 3
	})
	nc := c.Connect(t)
	for _, stream := range []string{subject.Stream, subject.DMStream, "KV_" + subject.PresenceBucket} {
		natstest.WaitReplicas(t, nc, stream, 3)
	}
	alice := dial(t, "http://"+m.Addr(), "alice")
	alice.join("lobby")
	if seq := alice.post("lobby", "kept three times", "k"); seq == 0 {
		t.Fatal("no seq")
	}
}
