package broadcaster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/files"
	"github.com/natter-chat/natter/shared/names"
	"github.com/natter-chat/natter/shared/ops"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

// maxPending bounds the stores in flight: past it an endpoint's handler
// waits, and NATS buffers the posts (and finally reports a slow consumer).
const maxPending = 4096

// storeTimeout is how long one store may take before the post is answered
// unavailable.
const storeTimeout = 5 * time.Second

// finalWait bounds how long Run, once the posts taken are handled, waits
// for the stores still in flight; with the drain it fits the 10-second
// shutdown promise. Both take less when Run's context was stopped with a
// deadline that leaves less (ops.Budget): the single binary stops its
// edge first, and gives the broadcaster what is left.
const finalWait = 2 * time.Second

// Config is what a broadcaster needs.
type Config struct {
	Retention    config.Retention
	MaxTextChars int
	// Replicas is how many copies JetStream keeps of each stream, at
	// least 1 (CHAT_STREAM_REPLICAS).
	Replicas int
	// Files are the limits of the file bucket, and how long an upload
	// never shared is kept (files.go).
	Files config.Files
}

// Broadcaster stores posts; see the package documentation.
type Broadcaster struct {
	cfg     Config
	nc      *nats.Conn
	js      jetstream.JetStream
	log     *slog.Logger
	metrics metrics
	// counts are the figures of the stats answer (Stats), kept beside
	// the metrics because a stats request may come on any goroutine.
	counts struct {
		stored, duplicates, refused, failed atomic.Int64
	}

	// pending carries accepted stores, in the order published, from the
	// endpoints' handlers to the acker. It is never closed: a handler may
	// still run after a drain that timed out.
	pending chan pendingStore
	// serving is closed once the endpoints are in place.
	serving chan struct{}
	// stopAcker is closed when the acker is to answer what is left and
	// end. stopMu orders it against the callbacks: a callback sends on
	// pending only under the read lock with stopped false, so nothing is
	// queued after the acker's last look.
	stopAcker chan struct{}
	stopMu    sync.RWMutex
	stopped   bool // guarded by stopMu
	// finalWait is the acker's finalWait, cut to what the stop's
	// deadline leaves: set before stopAcker is closed.
	finalWait time.Duration
	// files is the file bucket, set once Run has made sure of it.
	files atomic.Pointer[jetstream.ObjectStore]
}

type pendingStore struct {
	future   jetstream.PubAckFuture
	reply    string
	log      string // what is stored, for logs: "room lobby", "dm alice.bob"
	deadline time.Time
	start    time.Time // when PublishMsgAsync was called: natter_broadcaster_store_seconds
}

type metrics struct {
	stored     prometheus.Counter
	duplicates prometheus.Counter
	rejected   *prometheus.CounterVec
	failed     prometheus.Counter
	// store is natter_broadcaster_store_seconds: from PublishMsgAsync to
	// its ack or failure (a timeout included), observed by handle or
	// answer before the post is answered.
	store prometheus.Histogram
	// filesSwept counts the uploads deleted because never shared.
	filesSwept prometheus.Counter
}

// New returns a broadcaster on nc; its metrics go to reg.
func New(cfg Config, nc *nats.Conn, log *slog.Logger, reg prometheus.Registerer) (*Broadcaster, error) {
	if cfg.MaxTextChars <= 0 {
		cfg.MaxTextChars = proto.MaxTextChars
	}
	if cfg.Files == (config.Files{}) {
		cfg.Files = config.Defaults[config.Files]()
	}
	if cfg.Files.UnsharedTTL <= 0 || cfg.Files.BucketMaxBytes <= 0 {
		return nil, errors.New("broadcaster: CHAT_FILES_UNSHARED_TTL and CHAT_FILES_MAX_BYTES must be positive")
	}
	if err := store.CheckReplicas(cfg.Replicas); err != nil {
		return nil, fmt.Errorf("broadcaster: %w", err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPending),
		jetstream.WithPublishAsyncTimeout(storeTimeout))
	if err != nil {
		return nil, fmt.Errorf("broadcaster: jetstream: %w", err)
	}
	b := &Broadcaster{
		cfg:       cfg,
		nc:        nc,
		js:        js,
		log:       log,
		pending:   make(chan pendingStore, maxPending),
		stopAcker: make(chan struct{}),
		serving:   make(chan struct{}),
		metrics: metrics{
			stored: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "natter_broadcaster_messages_stored_total", Help: "Posts stored in the stream."}),
			duplicates: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "natter_broadcaster_duplicates_total", Help: "Posts whose id was already stored (answered with the original seq)."}),
			rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "natter_broadcaster_rejected_total", Help: "Posts refused by validation, by error code."}, []string{"code"}),
			failed: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "natter_broadcaster_store_failures_total", Help: "Posts that could not be stored (answered unavailable)."}),
			store: prometheus.NewHistogram(prometheus.HistogramOpts{
				Name: "natter_broadcaster_store_seconds", Help: "Stores of posts, from the asynchronous publish to the stream to its ack or failure (a timeout included).",
				Buckets: ops.LatencyBuckets}),
			filesSwept: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "natter_broadcaster_files_swept_total", Help: "Uploads deleted because they were never shared within CHAT_FILES_UNSHARED_TTL."}),
		},
	}
	for _, c := range []prometheus.Collector{b.metrics.stored, b.metrics.duplicates, b.metrics.rejected, b.metrics.failed, b.metrics.filesSwept} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("broadcaster: metrics: %w", err)
		}
	}
	// The codes validation refuses with start at zero, so that a fresh
	// process exposes them and rate() has a zero to start from.
	for _, code := range []string{proto.CodeBadRequest, proto.CodeInvalidRoom, proto.CodeInvalidUser, proto.CodeTooLong} {
		b.metrics.rejected.WithLabelValues(code)
	}
	if err := reg.Register(b.metrics.store); err != nil {
		return nil, fmt.Errorf("broadcaster: metrics: %w", err)
	}
	return b, nil
}

// Run makes sure the streams exist, serves posts until ctx ends, then
// drains. It returns after every goroutine it started has ended. NATS
// servers that can never hold the configured replicas make it return a
// *store.ReplicasError at once.
func (b *Broadcaster) Run(ctx context.Context) error {
	if err := b.ensureStream(ctx); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil // stopped before it started serving
	}
	// Room posts and dms come to two endpoints of the service, in one
	// queue group. Both handlers publish to the stream asynchronously and
	// queue the pending store for the acker; each endpoint keeps its own
	// order.
	svc, err := b.register()
	if err != nil {
		return err
	}
	// The subscriptions must reach the server before Run reports it is
	// serving; Flush waits for that.
	if err := b.nc.Flush(); err != nil && !errors.Is(err, nats.ErrConnectionReconnecting) {
		b.log.Warn("broadcaster: flush after subscribe", "err", err)
	}
	b.log.Info("broadcaster serving", "subjects", []string{subject.InRoomAll, subject.InDMAll}, "queue", subject.BroadcasterQueue)
	close(b.serving)

	ackerDone := make(chan struct{})
	go func() {
		defer close(ackerDone)
		b.ack()
	}()
	sctx, stopSweep := context.WithCancel(context.Background())
	sweepDone := make(chan struct{})
	go func() {
		defer close(sweepDone)
		b.sweep(sctx)
	}()
	defer func() { stopSweep(); <-sweepDone }()

	<-ctx.Done()
	b.drain(svc, ops.Budget(ctx, b.nc.Opts.DrainTimeout))
	b.stopMu.Lock()
	b.stopped = true
	b.stopMu.Unlock()
	b.finalWait = ops.Budget(ctx, finalWait)
	close(b.stopAcker)
	<-ackerDone
	return nil
}

// register adds the broadcaster to the NATS services framework, with the
// post subjects as its endpoints.
func (b *Broadcaster) register() (micro.Service, error) {
	svc, err := ops.AddService(b.nc, ops.Service{
		Name:        subject.ServiceBroadcaster,
		Description: "natter broadcaster: checks and stores posts and dms",
		Stats:       b.stats,
	})
	if err != nil {
		return nil, fmt.Errorf("broadcaster: %w", err)
	}
	for _, ep := range []struct{ name, subject string }{{"room", subject.InRoomAll}, {"dm", subject.InDMAll}} {
		err := svc.AddEndpoint(ep.name, micro.HandlerFunc(b.serve),
			micro.WithEndpointSubject(ep.subject), micro.WithEndpointQueueGroup(subject.BroadcasterQueue))
		if err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("broadcaster: subscribe %s: %w", ep.subject, err)
		}
	}
	return svc, nil
}

// Stats are the broadcaster's own figures in its stats answer.
type Stats struct {
	Stored     int64 `json:"stored"`
	Duplicates int64 `json:"duplicates"`
	Refused    int64 `json:"refused"`
	Failed     int64 `json:"failed"`
}

func (b *Broadcaster) stats() any {
	return Stats{Stored: b.counts.stored.Load(), Duplicates: b.counts.duplicates.Load(),
		Refused: b.counts.refused.Load(), Failed: b.counts.failed.Load()}
}

// drain stops the service, so that posts already taken are stored and
// answered, and waits for them under one deadline, within (the
// connection's drain timeout, or what the stop's deadline leaves). Stop unsubscribes the endpoints; the flush's round trip
// makes sure every post the server sent before that has arrived, and the
// barrier that each has been handled. Without NATS nothing more can
// arrive, and a flush would only wait for the reconnect: then only what
// arrived is waited for. The process must still stop inside the 10 s its
// contract gives it.
func (b *Broadcaster) drain(svc micro.Service, within time.Duration) {
	deadline := time.Now().Add(within)
	if err := svc.Stop(); err != nil {
		b.log.Warn("broadcaster: stop serving", "err", err)
	}
	if b.nc.IsConnected() {
		if err := b.nc.FlushTimeout(max(time.Until(deadline), time.Millisecond)); err != nil {
			b.log.Warn("broadcaster: flush after unsubscribing", "err", err)
		}
	}
	handled := make(chan struct{})
	if err := b.nc.Barrier(func() { close(handled) }); err != nil {
		return // closed: no callback runs any more
	}
	select {
	case <-handled:
	case <-time.After(time.Until(deadline)):
		b.log.Warn("broadcaster: drain timed out; posts still queued are answered unavailable")
	}
}

// Serving is closed once the broadcaster takes posts.
func (b *Broadcaster) Serving() <-chan struct{} { return b.serving }

// Ready reports whether the broadcaster takes posts and is connected to
// NATS: its /readyz, which the compose mesh waits for before it starts
// the edges.
func (b *Broadcaster) Ready() bool {
	select {
	case <-b.serving:
		return b.nc.IsConnected()
	default:
		return false
	}
}

// ensureStream retries until the streams are there with the configured
// replicas, or ctx ends: NATS may come up after the broadcaster, a cluster
// may be electing its leader or missing a server for a while. Only servers
// that can never hold the replicas end it with an error.
func (b *Broadcaster) ensureStream(ctx context.Context) error {
	for {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := store.EnsureStream(sctx, b.js, b.cfg.Retention, b.cfg.Replicas)
		if err == nil {
			var obs jetstream.ObjectStore
			obs, err = files.EnsureBucket(sctx, b.js, files.BucketConfig(b.cfg.Files, b.cfg.Retention, b.cfg.Replicas))
			if err == nil {
				b.files.Store(&obs)
			}
		}
		cancel()
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if refused := store.ReplicasRefused(err, b.cfg.Replicas, b.nc); refused != nil {
			return refused
		}
		b.log.Warn("broadcaster: stream not ready, retrying", "replicas", b.cfg.Replicas, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// serve answers one post. A post refused before it is stored is
// answered as an error of the service, so that the framework counts it.
func (b *Broadcaster) serve(req micro.Request) {
	perr := b.handle(req.Subject(), req.Reply(), req.Data())
	if perr == nil || !subject.IsReply(req.Reply()) {
		return // stored, to be answered by the acker; or nobody to answer
	}
	data, _ := json.Marshal(proto.PostReply{Code: perr.Code, Message: perr.Message})
	if err := req.Error(perr.Code, perr.Message, data); err != nil {
		b.log.Warn("broadcaster: reply", "err", err)
	}
}

// handle runs on an endpoint's goroutine: validate, stamp, store. A room
// message goes to the room stream, a dm to the dm stream, each on the
// subject of its room or conversation. A post that is refused or cannot
// be stored is returned as the error to answer; one handed to the acker
// returns nil.
func (b *Broadcaster) handle(subj, reply string, data []byte) *proto.Error {
	var out *nats.Msg
	var stream, log string
	if to, ok := subject.UserOfInDM(subj); ok {
		post, perr := b.validateDM(to, data)
		if perr != nil {
			return b.refuse(perr)
		}
		file, perr := b.shareFile(post, files.DMTarget(post.From, post.To))
		if perr != nil {
			return b.refuse(perr)
		}
		stored := proto.DM{Type: proto.TypeDM, From: post.From, To: post.To, Text: post.Text, File: file, ID: post.ID, TS: time.Now().UnixMilli()}
		out = &nats.Msg{Subject: subject.StoreDM(post.From, post.To), Data: proto.Encode(stored), Header: nats.Header{}}
		if post.ID != "" {
			out.Header.Set(jetstream.MsgIDHeader, store.DMMsgID(post.From, post.To, post.ID))
		}
		a, bb := subject.Pair(post.From, post.To)
		stream, log = subject.DMStream, "dm "+a+"."+bb
	} else {
		post, perr := b.validate(subj, data)
		if perr != nil {
			return b.refuse(perr)
		}
		file, perr := b.shareFile(post, files.RoomTarget(post.Room))
		if perr != nil {
			return b.refuse(perr)
		}
		stored := proto.Message{Type: proto.TypeMessage, Room: post.Room, From: post.From, Text: post.Text, File: file, ID: post.ID, TS: time.Now().UnixMilli()}
		out = &nats.Msg{Subject: subject.StoreRoom(post.Room), Data: proto.Encode(stored), Header: nats.Header{}}
		if post.ID != "" {
			out.Header.Set(jetstream.MsgIDHeader, store.MsgID(post.Room, post.From, post.ID))
		}
		stream, log = subject.Stream, "room "+post.Room
	}
	start := time.Now()
	future, err := b.js.PublishMsgAsync(out, jetstream.WithExpectStream(stream),
		jetstream.WithStallWait(storeTimeout))
	if err != nil {
		b.metrics.store.Observe(time.Since(start).Seconds())
		b.fail()
		b.log.Warn("broadcaster: store", "log", log, "err", err)
		return &proto.Error{Code: proto.CodeUnavailable, Message: "message store unavailable"}
	}
	p := pendingStore{future: future, reply: reply, log: log, deadline: start.Add(storeTimeout), start: start}
	// The acker reads pending until it is stopped, so this send cannot
	// block Run's write lock for longer than the acker takes per store.
	b.stopMu.RLock()
	stopped := b.stopped
	if !stopped {
		b.pending <- p
	}
	b.stopMu.RUnlock()
	if stopped {
		// Only after a drain that timed out. The store may still succeed;
		// a retry with the same id is then acknowledged with its seq.
		// Answered outside the lock: no lock is held across a publish.
		return &proto.Error{Code: proto.CodeUnavailable, Message: "broadcaster shutting down, try again"}
	}
	return nil
}

// refuse counts a post refused by validation and returns why.
func (b *Broadcaster) refuse(perr *proto.Error) *proto.Error {
	b.metrics.rejected.WithLabelValues(perr.Code).Inc()
	b.counts.refused.Add(1)
	return perr
}

// fail counts a post that could not be stored.
func (b *Broadcaster) fail() {
	b.metrics.failed.Inc()
	b.counts.failed.Add(1)
}

// validateDM checks a dm to user to as if it came from anyone: the
// recipient from the subject, names, text and id.
func (b *Broadcaster) validateDM(to string, data []byte) (proto.Post, *proto.Error) {
	if !names.ValidUser(to) {
		return proto.Post{}, &proto.Error{Code: proto.CodeInvalidUser, Message: "invalid recipient in subject"}
	}
	post, perr := proto.ParsePost(data)
	if perr != nil {
		return post, perr
	}
	if post.Room != "" {
		return post, &proto.Error{Code: proto.CodeBadRequest, Message: "a dm has no room"}
	}
	if post.To != "" && post.To != to {
		return post, &proto.Error{Code: proto.CodeBadRequest, Message: "to in payload differs from subject"}
	}
	post.To = to
	return post, b.checkSender(post)
}

// checkSender applies the rules every post shares: from a valid user
// name, text and id within the limits.
func (b *Broadcaster) checkSender(post proto.Post) *proto.Error {
	if !names.ValidUser(post.From) {
		return &proto.Error{Code: proto.CodeInvalidUser, Message: "invalid from"}
	}
	return proto.CheckPost(post.Text, post.File, post.ID, b.cfg.MaxTextChars)
}

// validate checks a post as if it came from anyone: room from the subject,
// names, text and id.
func (b *Broadcaster) validate(subj string, data []byte) (proto.Post, *proto.Error) {
	room, ok := subject.RoomOfInRoom(subj)
	if !ok || !names.ValidRoom(room) {
		return proto.Post{}, &proto.Error{Code: proto.CodeInvalidRoom, Message: "invalid room in subject " + subj}
	}
	post, perr := proto.ParsePost(data)
	if perr != nil {
		return post, perr
	}
	if post.Room != "" && post.Room != room {
		return post, &proto.Error{Code: proto.CodeBadRequest, Message: "room in payload differs from subject"}
	}
	if post.To != "" {
		return post, &proto.Error{Code: proto.CodeBadRequest, Message: "a room message has no to"}
	}
	post.Room = room
	return post, b.checkSender(post)
}

// ack answers each store in publish order once JetStream acknowledged it.
// Once told to stop, it answers what is queued, waiting at most finalWait
// in all.
func (b *Broadcaster) ack() {
	timer := time.NewTimer(storeTimeout)
	defer timer.Stop()
	var limit time.Time // zero until stopping; then when to give up on all
	for {
		select {
		case p := <-b.pending:
			b.answer(p, timer, &limit)
			continue
		case <-b.stopAcker:
		}
		if limit.IsZero() {
			limit = time.Now().Add(b.finalWait)
		}
		for {
			select {
			case p := <-b.pending:
				b.answer(p, timer, &limit)
			default:
				return
			}
		}
	}
}

// answer waits until the store of p is acknowledged, fails, or times out,
// and answers the post. A stop that comes meanwhile sets *limit.
func (b *Broadcaster) answer(p pendingStore, timer *time.Timer, limit *time.Time) {
	stop := b.stopAcker
	if !limit.IsZero() {
		stop = nil
	}
	for {
		deadline := p.deadline
		if !limit.IsZero() && limit.Before(deadline) {
			deadline = *limit
		}
		timer.Reset(max(time.Until(deadline), 0))
		select {
		case ack := <-p.future.Ok():
			timer.Stop()
			b.settled(p)
			b.respond(p.reply, b.stored(ack))
			return
		case err := <-p.future.Err():
			timer.Stop()
			b.settled(p)
			b.respond(p.reply, b.storeFailed(p.log, err))
			return
		case <-stop:
			timer.Stop()
			*limit = time.Now().Add(b.finalWait)
			stop = nil
			continue
		case <-timer.C:
		}
		// Out of time; but a store that finished meanwhile is not a
		// failure (select picks at random among ready cases).
		b.settled(p)
		select {
		case ack := <-p.future.Ok():
			b.respond(p.reply, b.stored(ack))
		case err := <-p.future.Err():
			b.respond(p.reply, b.storeFailed(p.log, err))
		default:
			b.fail()
			b.respond(p.reply, proto.PostReply{Code: proto.CodeUnavailable, Message: "message store timed out"})
		}
		return
	}
}

// settled observes the time p's store took, once it is acknowledged,
// has failed or is given up on.
func (b *Broadcaster) settled(p pendingStore) {
	b.metrics.store.Observe(time.Since(p.start).Seconds())
}

func (b *Broadcaster) stored(ack *jetstream.PubAck) proto.PostReply {
	if ack.Duplicate {
		b.metrics.duplicates.Inc()
		b.counts.duplicates.Add(1)
	} else {
		b.metrics.stored.Inc()
		b.counts.stored.Add(1)
	}
	return proto.PostReply{Seq: ack.Sequence, Duplicate: ack.Duplicate}
}

func (b *Broadcaster) storeFailed(log string, err error) proto.PostReply {
	b.fail()
	b.log.Warn("broadcaster: store failed", "log", log, "err", err)
	return proto.PostReply{Code: proto.CodeUnavailable, Message: "message store unavailable"}
}

// respond answers a post that came as a request; bots publish without a
// reply subject and get nothing.
func (b *Broadcaster) respond(reply string, r proto.PostReply) {
	if !subject.IsReply(reply) {
		return // none, or a subject that is no inbox: never answered there
	}
	data, _ := json.Marshal(r)
	if err := b.nc.Publish(reply, data); err != nil {
		b.log.Warn("broadcaster: reply", "err", err)
	}
}
