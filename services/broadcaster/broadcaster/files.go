package broadcaster

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/files"
	"github.com/natter-chat/natter/shared/proto"
)

// fileTimeout bounds the reads and the write of the bucket that one
// share makes.
const fileTimeout = 2 * time.Second

// shareFile checks the file a post shares into target (files.RoomTarget,
// files.DMTarget) and returns it as the stored event carries it; nil for
// a post without one. A user's upload may be shared only by its uploader,
// only where it was uploaded for, and only while it is kept; an object a
// bot put into the bucket itself (no uploader) only by a post that no
// edge sent, which is a bot's. The first share marks the upload shared,
// so that the sweep keeps it.
func (b *Broadcaster) shareFile(post proto.Post, target string) (*proto.File, *proto.Error) {
	if post.File == "" {
		return nil, nil
	}
	obs := b.bucket()
	if obs == nil {
		return nil, &proto.Error{Code: proto.CodeUnavailable, Message: "file store unavailable"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), fileTimeout)
	defer cancel()
	info, err := obs.GetInfo(ctx, post.File)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, &proto.Error{Code: proto.CodeBadRequest, Message: "no such file"}
	}
	if err != nil {
		b.log.Warn("broadcaster: file info", "file", post.File, "err", err)
		return nil, &proto.Error{Code: proto.CodeUnavailable, Message: "file store unavailable"}
	}
	m := files.MetaOf(info)
	switch {
	case m.Uploader == "" && post.Edge != "":
		return nil, &proto.Error{Code: proto.CodeBadRequest, Message: "the file is not an upload of " + post.From}
	case m.Uploader != "" && m.Uploader != post.From:
		return nil, &proto.Error{Code: proto.CodeBadRequest, Message: "the file is not an upload of " + post.From}
	case m.Uploader != "" && m.Target != target:
		return nil, &proto.Error{Code: proto.CodeBadRequest, Message: "the file was uploaded for another room or conversation"}
	case files.Expired(info, b.cfg.Files.UnsharedTTL, time.Now()):
		return nil, &proto.Error{Code: proto.CodeBadRequest, Message: "the upload was never shared and has expired; upload it again"}
	}
	if m.Uploader == "" {
		// A bot's object: its type is found in its first bytes now.
		if m.Type, err = sniffObject(ctx, obs, post.File); err != nil {
			b.log.Warn("broadcaster: file read", "file", post.File, "err", err)
			return nil, &proto.Error{Code: proto.CodeUnavailable, Message: "file store unavailable"}
		}
	} else if !m.Shared {
		m.Shared = true
		err := obs.UpdateMeta(ctx, post.File, jetstream.ObjectMeta{Name: post.File, Metadata: m.Metadata()})
		if err != nil {
			b.log.Warn("broadcaster: file shared", "file", post.File, "err", err)
			return nil, &proto.Error{Code: proto.CodeUnavailable, Message: "file store unavailable"}
		}
	}
	return &proto.File{ID: post.File, Name: m.Name, Size: int64(info.Size), Type: m.Type}, nil
}

// sniffObject reads an object's first bytes and tells its type.
func sniffObject(ctx context.Context, obs jetstream.ObjectStore, name string) (string, error) {
	r, err := obs.Get(ctx, name)
	if err != nil {
		return "", err
	}
	defer r.Close()
	first := make([]byte, files.SniffLen)
	n, err := io.ReadFull(r, first)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", err
	}
	return files.Sniff(first[:n]), nil
}

// bucket is the file bucket once Run has it; nil before.
func (b *Broadcaster) bucket() jetstream.ObjectStore {
	if p := b.files.Load(); p != nil {
		return *p
	}
	return nil
}

// sweepGrace is how much longer than the unshared TTL an upload is kept
// before the sweep deletes it: a share that checked it just inside the
// TTL has that long to mark it shared.
func sweepGrace(ttl time.Duration) time.Duration { return min(ttl/2, time.Minute) }

// sweepEvery is how often the sweep looks at the bucket.
func sweepEvery(ttl time.Duration) time.Duration {
	return min(max(ttl/4, 50*time.Millisecond), time.Minute)
}

// sweep deletes, until ctx ends, the uploads never shared whose TTL (and
// grace) has passed. Every broadcaster sweeps; a file two delete at once
// is gone either way.
func (b *Broadcaster) sweep(ctx context.Context) {
	ttl := b.cfg.Files.UnsharedTTL
	tick := time.NewTicker(sweepEvery(ttl))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		obs := b.bucket()
		if obs == nil {
			continue
		}
		b.sweepOnce(ctx, obs, ttl+sweepGrace(ttl))
	}
}

// sweepOnce deletes the expired uploads of obs.
func (b *Broadcaster) sweepOnce(ctx context.Context, obs jetstream.ObjectStore, after time.Duration) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	infos, err := obs.List(lctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return
	}
	if err != nil {
		if ctx.Err() == nil {
			b.log.Warn("broadcaster: file sweep: list", "err", err)
		}
		return
	}
	now := time.Now()
	for _, info := range infos {
		if !files.Expired(info, after, now) {
			continue
		}
		err := obs.Delete(lctx, info.Name)
		switch {
		case err == nil:
			b.metrics.filesSwept.Inc()
			b.log.Info("broadcaster: deleted an upload never shared", "file", info.Name, "age", now.Sub(info.ModTime).Round(time.Second))
		case errors.Is(err, jetstream.ErrObjectNotFound):
		default:
			b.log.Warn("broadcaster: file sweep: delete", "file", info.Name, "err", err)
		}
	}
}
