package edge

import (
	"context"
	"encoding/json"
	"time"

	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/store"
)

// History and replay limits (docs/protocol.md).
const (
	historyDefault = 50
	historyMax     = 200
	// maxReplay is the most messages a join with since replays: the
	// newest ones.
	maxReplay = 1000
	// replayBatch is how many messages one store read returns.
	replayBatch = 500
)

// history answers history for a room, or for the conversation with
// another user, from the store. The answer is a reply: it waits for room
// in the queue rather than counting against the slow-client limit.
func (c *client) history(req proto.Request) {
	var k key
	answer := proto.History{Type: proto.TypeHistory, Messages: []json.RawMessage{}}
	if req.DM != nil {
		k, answer.DM = dmKey(c.user, *req.DM), *req.DM
	} else {
		k, answer.Room = roomKey(*req.Room), *req.Room
	}
	log := k.log()
	limit := historyDefault
	if req.Limit != nil {
		limit = int(min(max(*req.Limit, 1), historyMax))
	}
	ctx, cancel := context.WithTimeout(c.e.ctx, c.e.cfg.Limits.PostTimeout)
	defer cancel()
	var msgs []store.Stored
	var more bool
	var err error
	if req.After != nil {
		msgs, more, err = store.After(ctx, c.e.js, log, uint64(*req.After), limit)
	} else {
		var before uint64
		if req.Before != nil {
			before = uint64(*req.Before)
			if before == 0 {
				// Nothing is older than seq 0; 0 is not "the newest".
				c.reply(proto.Encode(answer))
				return
			}
		}
		msgs, more, err = store.Before(ctx, c.e.js, log, before, limit)
	}
	if err != nil {
		c.e.log.Warn("history read failed", "log", k.String(), "err", err)
		c.refuse(req, &proto.Error{Code: proto.CodeUnavailable, Message: "message store unavailable, try again"})
		return
	}
	answer.Messages, answer.More = lines(msgs), more
	c.reply(proto.Encode(answer))
}

// lines turns stored messages into events with their seq, leaving out
// what is not a JSON object (only the broadcaster writes the stream).
func lines(msgs []store.Stored) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(msgs))
	for _, m := range msgs {
		if validObject(m.Data) {
			out = append(out, proto.WithSeq(m.Data, m.Seq))
		}
	}
	return out
}

// replay returns the events of room after since, up to last (the room's
// newest when the join subscribed), keeping the newest maxReplay: from
// the room's recent log when it holds them all, else from the stream. It
// reports whether the replay is complete: nothing after since was dropped
// by retention and the cap was not hit (docs/protocol.md, recovery).
func (c *client) replay(ctx context.Context, room string, since, last uint64) ([]json.RawMessage, bool, error) {
	if since > last {
		return nil, false, nil // the store was reset: the client reloads
	}
	start := time.Now()
	defer func() { c.e.metrics.replay.Observe(time.Since(start).Seconds()) }()
	if recent, oldest, capped, ok := c.e.hub.recentSince(room, since, last); ok {
		// What the stream would answer, if retention dropped none of it:
		// the stream is asked that, as below. Whole (not capped) and
		// nothing after since dropped is recovered; capped is not.
		first, err := store.First(ctx, c.e.js, store.Room(room))
		if err != nil {
			return nil, false, err
		}
		if first != 0 && (!capped && first <= since || capped && first <= oldest) {
			c.e.metrics.replays.WithLabelValues("memory").Inc()
			return recent, !capped, nil
		}
	}
	c.e.metrics.replays.WithLabelValues("stream").Inc()
	msgs, complete, err := c.replayStored(ctx, room, since, last)
	return lines(msgs), complete, err
}

// replayStored is replay from the stream.
func (c *client) replayStored(ctx context.Context, room string, since, last uint64) ([]store.Stored, bool, error) {
	var msgs []store.Stored
	capped := false
	for after := since; after < last; {
		batch, more, err := store.After(ctx, c.e.js, store.Room(room), after, replayBatch)
		if err != nil {
			return nil, false, err
		}
		for _, m := range batch {
			if m.Seq > last {
				more = false
				break
			}
			msgs = append(msgs, m)
			after = m.Seq
		}
		if len(msgs) > 2*maxReplay {
			msgs = append(msgs[:0], msgs[len(msgs)-maxReplay:]...)
			capped = true
		}
		if !more || len(batch) == 0 {
			break
		}
	}
	if len(msgs) > maxReplay {
		msgs = msgs[len(msgs)-maxReplay:]
		capped = true
	}
	if capped {
		return msgs, false, nil
	}
	first, err := store.First(ctx, c.e.js, store.Room(room))
	if err != nil {
		return nil, false, err
	}
	if first != 0 && first <= since {
		// The message at first is still kept and is not newer than since:
		// retention drops the oldest first, so nothing after since is gone.
		return msgs, true, nil
	}
	whole, err := store.NothingDropped(ctx, c.e.js, store.Room(room))
	if err != nil {
		return nil, false, err
	}
	return msgs, whole, nil
}
