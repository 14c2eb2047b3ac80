// Package store describes the JetStream stream that keeps every room
// message and the reads the edges make from it.
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
// retention limits of the contract, a two-minute de-duplication window on
// Nats-Msg-Id, and RePublish so that each stored message is fanned out in
// store order with its Nats-Sequence: every observer sees a room's seqs
// strictly increase, however many broadcasters store.
func StreamConfig(r config.Retention) jetstream.StreamConfig {
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
		Duplicates:        DedupWindow,
		AllowDirect:       true,
		RePublish: &jetstream.RePublish{
			Source:      subject.StoreRoomAll,
			Destination: subject.RepublishRoom,
		},
	}
}

// EnsureStream creates the stream or brings its configuration up to date.
func EnsureStream(ctx context.Context, js jetstream.JetStream, r config.Retention) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, StreamConfig(r))
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

// ErrNoStream means the stream does not exist yet (no broadcaster has run).
var ErrNoStream = errors.New("store: stream not found")

// LastSeq returns the seq of the newest message stored for room, 0 when the
// room has none. It uses a direct get, which any stream replica answers.
func LastSeq(ctx context.Context, nc *nats.Conn, room string) (uint64, error) {
	msg, err := nc.RequestWithContext(ctx, subject.DirectGetLast(subject.Stream, subject.StoreRoom(room)), nil)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return 0, fmt.Errorf("last seq of room %s: %w", room, ErrNoStream)
		}
		return 0, fmt.Errorf("last seq of room %s: %w", room, err)
	}
	switch status := msg.Header.Get("Status"); status {
	case "":
	case "404":
		return 0, nil
	default:
		return 0, fmt.Errorf("last seq of room %s: status %s %s", room, status, msg.Header.Get("Description"))
	}
	seq, err := strconv.ParseUint(msg.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("last seq of room %s: bad %s header: %w", room, jetstream.SequenceHeader, err)
	}
	return seq, nil
}
