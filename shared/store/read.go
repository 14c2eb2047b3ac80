package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/natter-chat/natter/shared/subject"
)

// Reads of a room's messages or a conversation's dms (a Log). JetStream
// keeps a per-subject index, and its direct gets answer from it without
// scanning the stream: a batch get with next_by_subj reads a log forward
// from any seq in one request; a last-by-subject get bounded by up_to_seq
// finds the newest message of the log below a seq, one message per
// request, which is how history pages back (BenchmarkHistory measures
// both against the stream's size).

// Stored is one stored message or dm: its seq and its payload, an event
// without the seq (proto.WithSeq adds it).
type Stored struct {
	Seq  uint64
	Data []byte
}

// numPendingHeader is the count, in a batch get, of the messages matching
// the request after this one.
const numPendingHeader = "Nats-Num-Pending"

// After returns up to limit messages of l with a seq above after, oldest
// first, and whether more follow them.
func After(ctx context.Context, js jetstream.JetStream, l Log, after uint64, limit int) ([]Stored, bool, error) {
	msgs, err := jetstreamext.GetBatch(ctx, js, l.Stream, limit,
		jetstreamext.GetBatchSeq(after+1), jetstreamext.GetBatchSubject(l.Subject))
	if err != nil {
		return nil, false, fmt.Errorf("read %s after %d: %w", l.Name, after, err)
	}
	var out []Stored
	more, none := false, false
	for m, err := range msgs {
		if errors.Is(err, jetstreamext.ErrNoMessages) {
			none = true
			break
		}
		if err != nil {
			return nil, false, fmt.Errorf("read %s after %d: %w", l.Name, after, err)
		}
		out = append(out, Stored{Seq: m.Sequence, Data: m.Data})
		np, _ := strconv.ParseUint(m.Header.Get(numPendingHeader), 10, 64)
		more = np > 0
	}
	// The reader ends quietly when the context expires or the connection
	// goes: an answer that is empty without saying so, or short while
	// more messages remain, was cut.
	if (len(out) == 0 && !none) || (more && len(out) < limit) {
		err := ctx.Err()
		if err == nil {
			err = errors.New("the read ended early")
		}
		return nil, false, fmt.Errorf("read %s after %d: %w", l.Name, after, err)
	}
	return out, more, nil
}

// Before returns up to limit messages of l with a seq below before (0: the
// newest messages), oldest first, and whether older ones exist.
func Before(ctx context.Context, js jetstream.JetStream, l Log, before uint64, limit int) ([]Stored, bool, error) {
	first, err := First(ctx, js, l)
	if err != nil || first == 0 {
		return nil, false, err
	}
	if before > 0 && before <= first {
		return nil, false, nil
	}
	out := make([]Stored, 0, limit)
	upTo := uint64(0) // the stream's newest
	if before > 0 {
		upTo = before - 1
	}
	for len(out) < limit {
		m, err := lastUpTo(ctx, js, l, upTo)
		if err != nil {
			return nil, false, err
		}
		if m == nil && len(out) == 0 && upTo >= first {
			// A bound beyond the stream's newest seq finds nothing (a
			// client's seq from before a store reset): read the newest.
			upTo = 0
			continue
		}
		if m == nil {
			break
		}
		out = append(out, *m)
		if m.Seq <= first {
			break
		}
		upTo = m.Seq - 1
	}
	// Oldest first.
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, len(out) > 0 && out[0].Seq > first, nil
}

// lastUpTo returns the newest message of l with a seq of at most upTo (0:
// any), nil when there is none. It is a plain request (the
// connection's shared reply subscription, not one of its own): the answer
// is the message, and the end-of-batch status after it is dropped.
func lastUpTo(ctx context.Context, js jetstream.JetStream, l Log, upTo uint64) (*Stored, error) {
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
		UpToSeq   uint64   `json:"up_to_seq,omitempty"`
	}{[]string{l.Subject}, upTo})
	if err != nil {
		return nil, err
	}
	msg, err := js.Conn().RequestWithContext(ctx, subject.DirectGet(l.Stream), req)
	if err != nil {
		return nil, fmt.Errorf("read %s up to %d: %w", l.Name, upTo, err)
	}
	switch status := msg.Header.Get("Status"); status {
	case "":
	case "404":
		return nil, nil
	default:
		return nil, fmt.Errorf("read %s up to %d: status %s %s", l.Name, upTo, status, msg.Header.Get("Description"))
	}
	seq, err := strconv.ParseUint(msg.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("read %s up to %d: bad %s header: %w", l.Name, upTo, jetstream.SequenceHeader, err)
	}
	return &Stored{Seq: seq, Data: msg.Data}, nil
}

// First returns the seq of the oldest message retained in l, 0 when it
// has none.
func First(ctx context.Context, js jetstream.JetStream, l Log) (uint64, error) {
	msgs, _, err := After(ctx, js, l, 0, 1)
	if err != nil || len(msgs) == 0 {
		return 0, err
	}
	return msgs[0].Seq, nil
}

// NothingDropped reports whether l's stream has never lost a message to
// its limits: its first seq is 1 and it has no gaps. Then every log of it
// is whole from its first message.
func NothingDropped(ctx context.Context, js jetstream.JetStream, l Log) (bool, error) {
	s, err := js.Stream(ctx, l.Stream)
	if err != nil {
		return false, fmt.Errorf("stream %s: %w", l.Stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return false, fmt.Errorf("stream %s: %w", l.Stream, err)
	}
	return info.State.FirstSeq <= 1 && info.State.NumDeleted == 0, nil
}

// Conversation is one of a user's conversations: the other party (the
// user itself for notes to oneself) and its newest dm.
type Conversation struct {
	With string
	Seq  uint64
	TS   int64 // the newest dm's ts, Unix milliseconds
}

// maxConversations is the most conversations one read lists: JetStream
// answers a multi-subject read of at most this many subjects.
const maxConversations = 1024

// Conversations returns user's conversations, each with its newest dm, in
// no particular order. One direct get reads the newest message of every
// subject of the user's conversations from the per-subject index; a user
// with more conversations than one such read takes has their subjects
// listed first (stream info, paged), then read maxConversations at a time.
func Conversations(ctx context.Context, js jetstream.JetStream, user string) ([]Conversation, error) {
	filters := subject.StoreDMsOf(user)
	out, err := newestOf(ctx, js, user, filters[:])
	if !errors.Is(err, jetstreamext.ErrBatchUnsupported) {
		return out, err
	}
	subjects, err := dmSubjects(ctx, js, filters[:])
	if err != nil {
		return nil, fmt.Errorf("conversations of %s: %w", user, err)
	}
	out = out[:0]
	for chunk := range slices.Chunk(subjects, maxConversations) {
		convs, err := newestOf(ctx, js, user, chunk)
		if err != nil {
			return nil, err
		}
		out = append(out, convs...)
	}
	return out, nil
}

// dmSubjects lists the subjects of the dm stream that match filters, each
// once, sorted.
func dmSubjects(ctx context.Context, js jetstream.JetStream, filters []string) ([]string, error) {
	s, err := js.Stream(ctx, subject.DMStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", subject.DMStream, err)
	}
	var subjects []string
	for _, f := range filters {
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(f))
		if err != nil {
			return nil, fmt.Errorf("stream %s, subjects %s: %w", subject.DMStream, f, err)
		}
		for subj := range info.State.Subjects {
			subjects = append(subjects, subj)
		}
	}
	slices.Sort(subjects)
	return slices.Compact(subjects), nil // a note to oneself matches both filters
}

// newestOf reads the newest dm of each subject that matches filters (at
// most maxConversations subjects: more is jetstreamext.ErrBatchUnsupported)
// as user's conversations.
func newestOf(ctx context.Context, js jetstream.JetStream, user string, filters []string) ([]Conversation, error) {
	msgs, err := jetstreamext.GetLastMsgsFor(ctx, js, subject.DMStream, filters)
	if err != nil {
		return nil, fmt.Errorf("conversations of %s: %w", user, err)
	}
	var out []Conversation
	seen := make(map[string]bool)
	n, more, none := 0, false, false
	for m, err := range msgs {
		if errors.Is(err, jetstreamext.ErrNoMessages) {
			none = true
			break
		}
		if err != nil {
			return nil, fmt.Errorf("conversations of %s: %w", user, err)
		}
		n++
		np, _ := strconv.ParseUint(m.Header.Get(numPendingHeader), 10, 64)
		more = np > 0
		a, b, ok := subject.PartiesOf(m.Subject)
		if !ok || (a != user && b != user) {
			continue
		}
		with := a
		if a == user {
			with = b
		}
		if seen[with] {
			continue // a note to oneself matches both filters
		}
		seen[with] = true
		var ev struct {
			TS int64 `json:"ts"`
		}
		if json.Unmarshal(m.Data, &ev) != nil || ev.TS == 0 {
			ev.TS = m.Time.UnixMilli()
		}
		out = append(out, Conversation{With: with, Seq: m.Sequence, TS: ev.TS})
	}
	// As in After: an empty answer that does not say so, or one that
	// stops while more remain (the reply's byte limit), was cut.
	if (n == 0 && !none) || more {
		err := ctx.Err()
		if err == nil {
			err = errors.New("the read ended early")
		}
		return nil, fmt.Errorf("conversations of %s: %w", user, err)
	}
	return out, nil
}
