package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/subject"
)

// BenchmarkHistory reads a page of 50 from a room of 10,000 messages, in
// a stream holding only that room, in one holding 1,000,000 messages
// across 1,000 rooms, and in one of 3,000,000: the time of a page back
// (history's default, and scrolling up) must not grow with the stream.
//
//	go test -run '^$' -bench History -benchtime 200x -timeout 20m ./store
func BenchmarkHistory(b *testing.B) {
	for _, size := range []struct {
		name  string
		total int
	}{{"stream=10k", 10_000}, {"stream=1M", 1_000_000}, {"stream=3M", 3_000_000}} {
		b.Run(size.name, func(b *testing.B) {
			ns := natstest.Start(b)
			js, err := jetstream.New(natstest.Connect(b, ns))
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if _, err := EnsureStream(ctx, js, config.Retention{MaxMsgs: 10_000, MaxAge: time.Hour, MaxBytes: 10 << 30}, 1); err != nil {
				b.Fatal(err)
			}
			// The room's messages are spread evenly through the stream.
			const roomMsgs = 10_000
			every := size.total / roomMsgs
			var seqs []uint64
			for i := range size.total {
				room := fmt.Sprintf("other-%d", i%999)
				if i%every == 0 {
					room = "target"
				}
				f, err := js.PublishAsync(subject.StoreRoom(room), fmt.Appendf(nil, `{"type":"message","room":%q,"from":"bench","text":"message number %d","ts":1}`, room, i))
				if err != nil {
					b.Fatal(err)
				}
				if room == "target" {
					select {
					case ack := <-f.Ok():
						seqs = append(seqs, ack.Sequence)
					case err := <-f.Err():
						b.Fatal(err)
					}
				}
			}
			<-js.PublishAsyncComplete()
			mid := seqs[len(seqs)/2]
			for _, read := range []struct {
				name string
				fn   func() ([]Stored, bool, error)
			}{
				{"newest", func() ([]Stored, bool, error) { return Before(ctx, js, Room("target"), 0, 50) }},
				{"before-middle", func() ([]Stored, bool, error) { return Before(ctx, js, Room("target"), mid, 50) }},
				{"after-middle", func() ([]Stored, bool, error) { return After(ctx, js, Room("target"), mid, 50) }},
				{"after-start", func() ([]Stored, bool, error) { return After(ctx, js, Room("target"), seqs[10], 50) }},
				{"after-end", func() ([]Stored, bool, error) { return After(ctx, js, Room("target"), seqs[len(seqs)-60], 50) }},
			} {
				b.Run(read.name, func(b *testing.B) {
					for b.Loop() {
						msgs, _, err := read.fn()
						if err != nil || len(msgs) != 50 {
							b.Fatalf("%d messages, %v", len(msgs), err)
						}
					}
				})
			}
		})
	}
}
