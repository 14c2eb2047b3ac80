package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/services/edge/ws"
	"github.com/natter-chat/natter/shared/auth"
	"github.com/natter-chat/natter/shared/files"
	"github.com/natter-chat/natter/shared/names"
	"github.com/natter-chat/natter/shared/proto"
)

// fileLookup bounds the edge's wait for the bucket's info, or an
// object's, before it answers 503.
const fileLookup = 3 * time.Second

// uploadTimeout bounds one upload, the reading of its body included.
const uploadTimeout = 5 * time.Minute

// Uploaded answers an upload (201).
type Uploaded struct {
	File string `json:"file"`
	Name string `json:"name"`
	Size int64  `json:"size"`
	Type string `json:"type"`
}

// fileBucket is the edge's handle on the file bucket: looked up on first
// use, once the broadcaster (or the single binary) has made it.
type fileBucket struct {
	obs atomic.Pointer[jetstream.ObjectStore]
}

// bucket returns the file bucket, looking it up the first time.
func (e *Edge) bucket(ctx context.Context) (jetstream.ObjectStore, error) {
	if p := e.files.obs.Load(); p != nil {
		return *p, nil
	}
	if e.js == nil || !e.nc.IsConnected() {
		return nil, errors.New("NATS unavailable")
	}
	ctx, cancel := context.WithTimeout(ctx, fileLookup)
	defer cancel()
	obs, err := e.js.ObjectStore(ctx, files.Bucket)
	if err != nil {
		return nil, err
	}
	e.files.obs.Store(&obs)
	return obs, nil
}

// fileHeaders are on every answer of /files and /files/ID, refusals
// included: no browser guesses a type, and a file opened on its own is
// in a sandbox (no scripts, no same-origin).
func fileHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox")
}

// fileError answers a refusal of /files as a JSON object, as the
// WebSocket's error events read: {"code", "message"}.
func fileError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"code": code, "message": message})
}

// bearer is the token of an Authorization: Bearer header; "" for none.
func bearer(r *http.Request) string {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// FileLimits answers GET /files: what the page checks before it uploads.
type FileLimits struct {
	MaxBytes int64 `json:"max_bytes"`
}

// limits is GET /files: the largest file an upload may carry.
func (e *Edge) limits(w http.ResponseWriter, _ *http.Request) {
	fileHeaders(w)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(FileLimits{MaxBytes: e.cfg.Files.FileMaxBytes})
}

// upload is POST /files?room=ROOM or ?dm=USER: admitted as a WebSocket
// is, the body streamed into the bucket, refused with 413 as soon as it
// passes the limit (what was stored of it is purged), its type found in
// its first bytes.
func (e *Edge) upload(w http.ResponseWriter, r *http.Request) {
	fileHeaders(w)
	user, addr, no := e.gate.admit(ws.RequestOf(r), bearer(r))
	if no != nil {
		e.metrics.uploads.WithLabelValues("refused").Inc()
		fileError(w, no.Status, "refused", no.Text)
		return
	}
	defer e.gate.release(addr)
	status, body := e.store(r, user)
	e.metrics.uploads.WithLabelValues(strconv.Itoa(status)).Inc()
	if status != http.StatusCreated {
		fileError(w, status, body.(*proto.Error).Code, body.(*proto.Error).Message)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(body)
}

// store reads an admitted upload of user into the bucket: 201 and
// Uploaded, or the status and the proto.Error to refuse with.
func (e *Edge) store(r *http.Request, user string) (int, any) {
	refuse := func(status int, code, msg string) (int, any) {
		return status, &proto.Error{Code: code, Message: msg}
	}
	q := r.URL.Query()
	room, dm := q.Get("room"), q.Get("dm")
	var target string
	switch {
	case room != "" && dm != "":
		return refuse(http.StatusBadRequest, proto.CodeBadRequest, "room and dm together")
	case room != "":
		if !names.ValidRoom(room) {
			return refuse(http.StatusBadRequest, proto.CodeInvalidRoom, "invalid room name")
		}
		target = files.RoomTarget(room)
	case dm != "":
		if !names.ValidUser(dm) {
			return refuse(http.StatusBadRequest, proto.CodeInvalidUser, "invalid user name")
		}
		target = files.DMTarget(user, dm)
	default:
		return refuse(http.StatusBadRequest, proto.CodeBadRequest, "say where the file goes: ?room=ROOM or ?dm=USER")
	}
	name, err := files.ParseName(r.Header.Get("X-File-Name"))
	if err != nil {
		return refuse(http.StatusBadRequest, proto.CodeBadRequest, err.Error())
	}
	limit := e.cfg.Files.FileMaxBytes
	tooLarge := "the file is larger than " + strconv.FormatInt(limit, 10) + " bytes"
	if r.ContentLength > limit {
		return refuse(http.StatusRequestEntityTooLarge, proto.CodeTooLong, tooLarge)
	}
	ctx, cancel := context.WithTimeout(e.ctx, uploadTimeout)
	defer cancel()
	obs, err := e.bucket(ctx)
	if err != nil || !e.nc.IsConnected() {
		// Without NATS, Put's chunks would wait in the reconnect buffer.
		return refuse(http.StatusServiceUnavailable, proto.CodeUnavailable, "file store unavailable, try again")
	}
	// The body is read through a limit one byte past the most allowed,
	// so that a larger file fails as soon as it passes it.
	body := &limited{r: r.Body, left: limit}
	first := make([]byte, files.SniffLen)
	n, err := io.ReadFull(body, first)
	if body.over {
		return refuse(http.StatusRequestEntityTooLarge, proto.CodeTooLong, tooLarge)
	}
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return refuse(http.StatusBadRequest, proto.CodeBadRequest, "the upload ended early")
	}
	if n == 0 {
		return refuse(http.StatusBadRequest, proto.CodeBadRequest, "the file is empty")
	}
	meta := files.Meta{Uploader: user, Target: target, Type: files.Sniff(first[:n]), Name: name}
	id := files.NewID()
	info, err := obs.Put(ctx, jetstream.ObjectMeta{Name: id, Metadata: meta.Metadata()},
		&paced{r: io.MultiReader(bytes.NewReader(first[:n]), body), ctx: ctx, flush: e.nc.FlushWithContext})
	if err != nil {
		pctx, cancel := context.WithTimeout(e.ctx, fileLookup)
		if perr := files.PurgeMeta(pctx, e.js, id); perr != nil {
			e.log.Warn("edge: purging a failed upload", "file", id, "err", perr)
		}
		cancel()
	}
	switch {
	case body.over:
		return refuse(http.StatusRequestEntityTooLarge, proto.CodeTooLong, tooLarge)
	case err != nil && bucketFull(err):
		return refuse(http.StatusInsufficientStorage, proto.CodeUnavailable, "the file store is full")
	case err != nil && body.err != nil:
		return refuse(http.StatusBadRequest, proto.CodeBadRequest, "the upload ended early")
	case err != nil:
		e.log.Warn("edge: upload", "err", err)
		return refuse(http.StatusServiceUnavailable, proto.CodeUnavailable, "file store unavailable, try again")
	}
	return http.StatusCreated, Uploaded{File: id, Name: name, Size: int64(info.Size), Type: meta.Type}
}

// pacedEvery is how many bytes of an upload may be sent to NATS before
// the server has answered a ping behind them.
const pacedEvery = 1 << 20

// paced is an upload's body as Put reads it, waiting after each
// pacedEvery bytes until the NATS server has read what was sent. Put
// publishes 128 KiB chunks asynchronously, up to 4,000 of them unacked,
// each kept until acked: without the wait a client faster than the
// server would have the whole file in the edge's memory.
type paced struct {
	r     io.Reader
	ctx   context.Context
	flush func(context.Context) error
	sent  int
}

func (p *paced) Read(b []byte) (int, error) {
	if p.sent >= pacedEvery {
		if err := p.flush(p.ctx); err != nil {
			return 0, err
		}
		p.sent = 0
	}
	n, err := p.r.Read(b)
	p.sent += n
	return n, err
}

// limited reads at most left bytes of r; past them it fails, and says so
// (over). The error of r itself is kept (err): a client gone mid-upload.
type limited struct {
	r    io.Reader
	left int64
	over bool
	err  error
}

var errTooLarge = errors.New("the file is larger than the limit")

func (l *limited) Read(p []byte) (int, error) {
	if l.over {
		return 0, errTooLarge
	}
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.r.Read(p)
	if int64(n) > l.left {
		l.over = true
		return 0, errTooLarge
	}
	l.left -= int64(n)
	if err != nil && !errors.Is(err, io.EOF) {
		l.err = err
	}
	return n, err
}

// errCodeStoreFailed is JetStream's error code of a message it could not
// store (nats-server's JSStreamStoreFailedF), which nats.go does not name.
const errCodeStoreFailed jetstream.ErrorCode = 10077

// bucketFull reports whether a put failed because the bucket holds its
// CHAT_FILES_MAX_BYTES: JetStream refuses the chunk that would pass it
// with "maximum bytes exceeded" (the bucket discards new messages).
func bucketFull(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == errCodeStoreFailed && strings.Contains(apiErr.Description, "maximum bytes")
	}
	return strings.Contains(err.Error(), "maximum bytes exceeded")
}

// download is GET /files/ID: the file, to whoever may read where it was
// uploaded for (with auth, any valid token for a room's file, only the
// two parties' for a dm's), with Range, ETag and caching. Only the image
// types are served inline as themselves; anything else as an attachment
// of type application/octet-stream.
func (e *Edge) download(w http.ResponseWriter, r *http.Request) {
	fileHeaders(w)
	id := r.PathValue("id")
	if !proto.ValidFileID(id) {
		fileError(w, http.StatusNotFound, proto.CodeBadRequest, "no such file")
		return
	}
	var user string
	if secret := e.cfg.Web.AuthSecret; secret != "" {
		token := bearer(r)
		if token == "" {
			token = r.URL.Query().Get("token")
		}
		u, err := auth.Check([]byte(secret), token)
		if err != nil {
			fileError(w, http.StatusUnauthorized, "refused", "a valid token is needed: Authorization: Bearer JWT or ?token=JWT")
			return
		}
		user = u
	}
	ctx, cancel := context.WithTimeout(r.Context(), fileLookup)
	defer cancel()
	obs, err := e.bucket(ctx)
	if err != nil {
		fileError(w, http.StatusServiceUnavailable, proto.CodeUnavailable, "file store unavailable, try again")
		return
	}
	info, err := obs.GetInfo(ctx, id)
	if errors.Is(err, jetstream.ErrObjectNotFound) || (err == nil && info.Deleted) {
		fileError(w, http.StatusNotFound, proto.CodeBadRequest, "no such file")
		return
	}
	if err != nil {
		fileError(w, http.StatusServiceUnavailable, proto.CodeUnavailable, "file store unavailable, try again")
		return
	}
	meta := files.MetaOf(info)
	if user != "" && !mayRead(meta, user) {
		fileError(w, http.StatusForbidden, "refused", "only the two parties of a dm may read its files")
		return
	}
	rs := &objectReader{ctx: r.Context(), obs: obs, name: id, size: int64(info.Size)}
	defer rs.close()
	typ := meta.Type
	if meta.Uploader == "" {
		// A bot's object: told from its first bytes, as the broadcaster
		// told it when it was shared.
		if typ, err = rs.sniff(); err != nil {
			fileError(w, http.StatusServiceUnavailable, proto.CodeUnavailable, "file store unavailable, try again")
			return
		}
	}
	h := w.Header()
	h.Set("Content-Type", typ)
	disposition := "attachment"
	if files.Inline(typ) {
		disposition = "inline"
	}
	h.Set("Content-Disposition", mime.FormatMediaType(disposition, map[string]string{"filename": meta.Name}))
	h.Set("ETag", strconv.Quote(info.Digest))
	// A file's bytes never change under its ID; a dm's are for two
	// people only, so no shared cache keeps them.
	h.Set("Cache-Control", "private, max-age=31536000, immutable")
	http.ServeContent(w, r, "", info.ModTime, rs)
}

// mayRead reports whether user may read a file of meta: any user a
// room's, the parties a dm's. A bot's object, not uploaded for anywhere,
// is a room's.
func mayRead(meta files.Meta, user string) bool {
	pair, ok := strings.CutPrefix(meta.Target, "dm:")
	if !ok {
		return true
	}
	a, b, _ := strings.Cut(pair, ".")
	return user == a || user == b
}

// objectReader is an object of the bucket as the io.ReadSeeker that
// http.ServeContent reads ranges from: the object is read from its start
// when first read and after a seek backwards, and the bytes before the
// offset are skipped (files are at most CHAT_FILE_MAX_BYTES).
type objectReader struct {
	ctx  context.Context
	obs  jetstream.ObjectStore
	name string
	size int64
	off  int64 // where the next Read reads
	pos  int64 // where r is
	r    jetstream.ObjectResult
}

func (o *objectReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += o.off
	case io.SeekEnd:
		offset += o.size
	default:
		return 0, errors.New("objectReader: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("objectReader: negative offset")
	}
	o.off = offset
	return offset, nil
}

func (o *objectReader) Read(p []byte) (int, error) {
	if o.off >= o.size {
		return 0, io.EOF
	}
	if o.r != nil && o.off < o.pos {
		o.close() // backwards: from the start again
	}
	if o.r == nil {
		r, err := o.obs.Get(o.ctx, o.name)
		if err != nil {
			return 0, err
		}
		o.r, o.pos = r, 0
	}
	if o.off > o.pos {
		n, err := io.CopyN(io.Discard, o.r, o.off-o.pos)
		o.pos += n
		if err != nil {
			return 0, err
		}
	}
	n, err := o.r.Read(p)
	o.pos += int64(n)
	o.off = o.pos
	return n, err
}

// sniff tells the object's type from its first bytes, and leaves the
// reader where it was.
func (o *objectReader) sniff() (string, error) {
	off := o.off
	o.off = 0
	first := make([]byte, min(int64(files.SniffLen), o.size))
	_, err := io.ReadFull(o, first)
	o.off = off
	if err != nil {
		return "", err
	}
	return files.Sniff(first), nil
}

func (o *objectReader) close() {
	if o.r != nil {
		_ = o.r.Close()
		o.r = nil
	}
}
