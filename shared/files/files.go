// Package files describes the files shared in rooms and dms
// (docs/protocol.md, Files): the JetStream object store bucket CHAT_FILES
// that keeps them, their IDs, what natter writes into an object's
// metadata when a user uploads it, and how a file's type is told from its
// first bytes. The edge uploads and serves files, the broadcaster checks
// a share and marks the file shared, and deletes the uploads never shared.
package files

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/subject"
)

// Bucket is the object store bucket of every file; its stream is
// OBJ_CHAT_FILES.
const Bucket = "CHAT_FILES"

// BucketConfig is the bucket: the files' total limit, the history's age
// (a file goes when the messages that could show it have gone), replicas
// as the streams have.
func BucketConfig(f config.Files, r config.Retention, replicas int) jetstream.ObjectStoreConfig {
	return jetstream.ObjectStoreConfig{
		Bucket:      Bucket,
		Description: "natter files shared in rooms and dms",
		TTL:         r.MaxAge,
		MaxBytes:    f.BucketMaxBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	}
}

// EnsureBucket creates the bucket, or updates it to cfg.
func EnsureBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	obs, err := js.CreateOrUpdateObjectStore(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("files: bucket %s: %w", Bucket, err)
	}
	return obs, nil
}

// Stream is the stream that holds the bucket.
const Stream = "OBJ_" + Bucket

// MetaSubject is the subject of the meta message of the object name.
func MetaSubject(name string) string {
	return "$O." + Bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(name))
}

// PurgeMeta removes what a failed put left of the object name: nats.go's
// Put purges the chunks it stored, but when a chunk is refused after the
// last was sent (the bucket full), its meta message, small enough to
// fit, stays, and lists a file whose bytes are gone.
func PurgeMeta(ctx context.Context, js jetstream.JetStream, name string) error {
	s, err := js.Stream(ctx, Stream)
	if err != nil {
		return err
	}
	return s.Purge(ctx, jetstream.WithPurgeSubject(MetaSubject(name)))
}

// idBytes is how many random bytes an ID has: 128 bits, written as 32
// hex digits.
const idBytes = 16

// NewID returns a fresh file ID; proto.ValidFileID accepts it.
func NewID() string {
	var b [idBytes]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// MaxNameBytes is the longest file name, in bytes of UTF-8.
const MaxNameBytes = 255

// ParseName reads an X-File-Name header: percent-encoded UTF-8, at most
// MaxNameBytes once decoded, not blank, without control characters, and
// without a path (a name with / or \ is refused, not cut).
func ParseName(header string) (string, error) {
	name, err := url.PathUnescape(header)
	if err != nil {
		return "", errors.New("X-File-Name is not percent-encoded")
	}
	switch {
	case !utf8.ValidString(name):
		return "", errors.New("X-File-Name is not UTF-8")
	case len(name) > MaxNameBytes:
		return "", fmt.Errorf("X-File-Name is longer than %d bytes", MaxNameBytes)
	case strings.TrimFunc(name, unicode.IsSpace) == "":
		return "", errors.New("X-File-Name is blank")
	case strings.ContainsAny(name, `/\`):
		return "", errors.New("X-File-Name must not hold a path")
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return "", errors.New("X-File-Name holds a control character")
	}
	return name, nil
}

// The types a file is served as: those a browser may show inline as
// themselves, and everything else.
const (
	TypePNG    = "image/png"
	TypeJPEG   = "image/jpeg"
	TypeGIF    = "image/gif"
	TypeWebP   = "image/webp"
	TypeBinary = "application/octet-stream"
)

// SniffLen is how many first bytes Sniff looks at.
const SniffLen = 512

// Sniff tells a file's type from its first bytes (up to SniffLen), as a
// browser would: PNG, JPEG, GIF and WebP as themselves, anything else
// (SVG, HTML, PDF, text) TypeBinary. What the client said is never
// asked.
func Sniff(first []byte) string {
	switch t := http.DetectContentType(first); t {
	case TypePNG, TypeJPEG, TypeGIF, TypeWebP:
		return t
	}
	return TypeBinary
}

// Inline reports whether a file of type t is served inline.
func Inline(t string) bool { return t != TypeBinary }

// Target is where an upload may be shared: "room:<room>", or
// "dm:<a>.<b>" for the conversation of a and b (in subject.Pair order).
func RoomTarget(room string) string { return "room:" + room }

// DMTarget is the target of the conversation of x and y.
func DMTarget(x, y string) string {
	a, b := subject.Pair(x, y)
	return "dm:" + a + "." + b
}

// Metadata keys natter writes into an uploaded object.
const (
	metaUploader = "natter-uploader"
	metaTarget   = "natter-target"
	metaType     = "natter-type"
	metaName     = "natter-name"
	metaShared   = "natter-shared"
)

// Meta is what natter keeps with an upload: who uploaded it, where it may
// be shared, its sniffed type and its name, and whether it has been
// shared. An object put by a bot with `nats object put` has none of it
// (Uploader empty).
type Meta struct {
	Uploader string
	Target   string
	Type     string
	Name     string
	Shared   bool
}

// Metadata is m as an object's metadata.
func (m Meta) Metadata() map[string]string {
	md := map[string]string{metaUploader: m.Uploader, metaTarget: m.Target, metaType: m.Type, metaName: m.Name}
	if m.Shared {
		md[metaShared] = "true"
	}
	return md
}

// MetaOf reads natter's metadata from an object's info. The name falls
// back to the object's own name, the type to TypeBinary until sniffed.
func MetaOf(info *jetstream.ObjectInfo) Meta {
	md := info.Metadata
	m := Meta{Uploader: md[metaUploader], Target: md[metaTarget], Type: md[metaType], Name: md[metaName],
		Shared: md[metaShared] == "true"}
	if m.Name == "" {
		m.Name = info.Name
	}
	if m.Type == "" {
		m.Type = TypeBinary
	}
	return m
}

// Expired reports whether an upload of info was never shared and ended
// more than ttl before now: the broadcaster deletes it, and refuses to
// share it.
func Expired(info *jetstream.ObjectInfo, ttl time.Duration, now time.Time) bool {
	return !MetaOf(info).Shared && MetaOf(info).Uploader != "" && now.Sub(info.ModTime) > ttl
}
