// Package store describes the JetStream streams that keep every room
// message and every dm, and the reads the edges make from them.
package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/subject"
)

// DedupWindow is how long a repeated client id is recognised.
const DedupWindow = 2 * time.Minute

// StreamConfig is the stream of room messages: one subject per room, the
// retention limits of the contract, replicas copies (one per server of a
// cluster), a two-minute de-duplication window on Nats-Msg-Id, and
// RePublish so that each stored message is fanned out in store order with
// its Nats-Sequence: every observer sees a room's seqs strictly increase,
// however many broadcasters store.
func StreamConfig(r config.Retention, replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              subject.Stream,
		Description:       "natter room messages",
		Subjects:          []string{subject.StoreRoomAll},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxMsgsPerSubject: r.MaxMsgs,
		MaxAge:            r.MaxAge,
		MaxBytes:          r.MaxBytes,
		Replicas:          replicas,
		Duplicates:        DedupWindow,
		AllowDirect:       true,
		RePublish: &jetstream.RePublish{
			Source:      subject.StoreRoomAll,
			Destination: subject.RepublishRoom,
		},
	}
}

// DMStreamConfig is the stream of dms: one subject per conversation,
// republished on chat.dm.<a>.<b> with its Nats-Sequence, with the same
// limits per conversation as the room stream has per room, and as many
// replicas.
func DMStreamConfig(r config.Retention, replicas int) jetstream.StreamConfig {
	cfg := StreamConfig(r, replicas)
	cfg.Name = subject.DMStream
	cfg.Description = "natter direct messages"
	cfg.Subjects = []string{subject.StoreDMAll}
	cfg.RePublish = &jetstream.RePublish{Source: subject.StoreDMAll, Destination: subject.RepublishDM}
	return cfg
}

// splitBytes shares the byte limit of the contract ("in all") between the
// two streams: half each.
func splitBytes(r config.Retention) config.Retention {
	if r.MaxBytes > 0 {
		r.MaxBytes = max(r.MaxBytes/2, 1)
	}
	return r
}

// EnsureStream creates both streams (rooms and dms) or brings their
// configuration up to date, replicas included; the byte limit is shared
// between them. It returns the room stream. ReplicasRefused tells an error
// worth retrying from servers that cannot hold replicas copies.
func EnsureStream(ctx context.Context, js jetstream.JetStream, r config.Retention, replicas int) (jetstream.Stream, error) {
	r = splitBytes(r)
	if _, err := js.CreateOrUpdateStream(ctx, DMStreamConfig(r, replicas)); err != nil {
		return nil, fmt.Errorf("stream %s: %w", subject.DMStream, err)
	}
	s, err := js.CreateOrUpdateStream(ctx, StreamConfig(r, replicas))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", subject.Stream, err)
	}
	return s, nil
}

// MsgID is the de-duplication key of a post: the same user's id in the same
// room. The id is free text, so it is quoted to keep the header one line.
func MsgID(room, user, id string) string {
	return "room:" + room + ":" + user + ":" + strconv.Quote(id)
}

// DMMsgID is the de-duplication key of a dm: the same sender's id in the
// same conversation.
func DMMsgID(from, to, id string) string {
	a, b := subject.Pair(from, to)
	return "dm:" + a + "." + b + ":" + from + ":" + strconv.Quote(id)
}

// ErrNoStream means the stream does not exist yet (no broadcaster has run).
var ErrNoStream = errors.New("store: stream not found")

// Log is what a read covers: one room's messages or one conversation's
// dms, a subject of a stream.
type Log struct {
	Stream  string
	Subject string
	// Name says which, in errors: "room lobby", "dm alice.bob".
	Name string
}

// Room is the log of room's messages.
func Room(room string) Log {
	return Log{Stream: subject.Stream, Subject: subject.StoreRoom(room), Name: "room " + room}
}

// Between is the log of the dms between x and y (either order).
func Between(x, y string) Log {
	a, b := subject.Pair(x, y)
	return Log{Stream: subject.DMStream, Subject: subject.StoreDM(a, b), Name: "dm " + a + "." + b}
}

// LastSeq returns the seq of the newest message stored in l, 0 when it has
// none. It uses a direct get, which any stream replica answers. A subject
// with wildcards gives the newest of all it matches.
func LastSeq(ctx context.Context, nc *nats.Conn, l Log) (uint64, error) {
	msg, err := nc.RequestWithContext(ctx, subject.DirectGetLast(l.Stream, l.Subject), nil)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return 0, fmt.Errorf("last seq of %s: %w", l.Name, ErrNoStream)
		}
		return 0, fmt.Errorf("last seq of %s: %w", l.Name, err)
	}
	switch status := msg.Header.Get("Status"); status {
	case "":
	case "404":
		return 0, nil
	default:
		return 0, fmt.Errorf("last seq of %s: status %s %s", l.Name, status, msg.Header.Get("Description"))
	}
	seq, err := strconv.ParseUint(msg.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("last seq of %s: bad %s header: %w", l.Name, jetstream.SequenceHeader, err)
	}
	return seq, nil
}
