package files

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/config"
)

func TestParseName(t *testing.T) {
	for _, tc := range []struct {
		header, want string // want "": refused
	}{
		{"cat.png", "cat.png"},
		{url.PathEscape("cat 🐈.png"), "cat 🐈.png"},
		{"r%C3%A9sum%C3%A9.pdf", "résumé.pdf"},
		{"a+b.txt", "a+b.txt"}, // a path escape, not a query: + is itself
		{strings.Repeat("n", 255), strings.Repeat("n", 255)},
		{strings.Repeat("n", 256), ""},
		{"", ""},
		{"%20%20", ""},
		{"..%2F..%2Fetc%2Fpasswd", ""},
		{"a%5Cb", ""},
		{"a%00b", ""},
		{"a%0Ab", ""},
		{"%ff%fe", ""},
		{"%zz", ""},
	} {
		got, err := ParseName(tc.header)
		if (err == nil) != (tc.want != "") || got != tc.want {
			t.Errorf("ParseName(%q) = %q, %v; want %q", tc.header, got, err, tc.want)
		}
	}
}

// FuzzParseName: a name taken is valid UTF-8 of at most 255 bytes, not
// blank, with no path or control character, and is what url.PathUnescape
// makes of the header.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{"cat.png", "r%C3%A9sum%C3%A9.pdf", "%2F", "a%00", "%", strings.Repeat("%41", 100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		name, err := ParseName(header)
		if err != nil {
			return
		}
		want, uerr := url.PathUnescape(header)
		if uerr != nil || name != want {
			t.Fatalf("ParseName(%q) = %q, PathUnescape says %q, %v", header, name, want, uerr)
		}
		if !utf8.ValidString(name) || len(name) > MaxNameBytes || strings.TrimFunc(name, unicode.IsSpace) == "" ||
			strings.ContainsAny(name, `/\`) || strings.IndexFunc(name, unicode.IsControl) >= 0 {
			t.Fatalf("ParseName(%q) took %q", header, name)
		}
	})
}

func TestSniff(t *testing.T) {
	for _, tc := range []struct {
		first string
		want  string
	}{
		{"\x89PNG\r\n\x1a\nrest", TypePNG},
		{"\xff\xd8\xffrest", TypeJPEG},
		{"GIF89a....", TypeGIF},
		{"GIF87a....", TypeGIF},
		{"RIFF\x00\x00\x00\x00WEBPVP8 ", TypeWebP},
		{"<svg xmlns='http://www.w3.org/2000/svg'/>", TypeBinary},
		{"<!DOCTYPE html><script>x</script>", TypeBinary},
		{"<?xml version='1.0'?><svg/>", TypeBinary},
		{"%PDF-1.7", TypeBinary},
		{"", TypeBinary},
		{"plain text", TypeBinary},
	} {
		if got := Sniff([]byte(tc.first)); got != tc.want {
			t.Errorf("Sniff(%q) = %q, want %q", tc.first, got, tc.want)
		}
	}
}

// FuzzSniff: whatever the bytes, the type is one of the five, inline only
// when net/http's sniffer (the reference a browser follows) finds that
// very image type.
func FuzzSniff(f *testing.F) {
	for _, s := range []string{"\x89PNG\r\n\x1a\n", "GIF89a", "<svg>", "<html>", "RIFF\x00\x00\x00\x00WEBPVP"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := Sniff(b)
		ref := http.DetectContentType(b)
		switch got {
		case TypePNG, TypeJPEG, TypeGIF, TypeWebP:
			if ref != got || !Inline(got) {
				t.Fatalf("Sniff = %q, net/http says %q", got, ref)
			}
		case TypeBinary:
			if Inline(got) || ref == TypePNG || ref == TypeJPEG || ref == TypeGIF || ref == TypeWebP {
				t.Fatalf("Sniff = %q, net/http says %q", got, ref)
			}
		default:
			t.Fatalf("Sniff = %q", got)
		}
	})
}

func TestMetaRoundTrip(t *testing.T) {
	m := Meta{Uploader: "alice", Target: DMTarget("zed", "alice"), Type: TypePNG, Name: "a b.png"}
	info := &jetstream.ObjectInfo{ObjectMeta: jetstream.ObjectMeta{Name: "0123456789abcdef0123456789abcdef", Metadata: m.Metadata()}}
	if got := MetaOf(info); got != m || got.Target != "dm:alice.zed" {
		t.Fatalf("MetaOf = %+v, want %+v", got, m)
	}
	m.Shared = true
	info.Metadata = m.Metadata()
	if got := MetaOf(info); !got.Shared {
		t.Fatal("shared lost")
	}
	// A bot's object: no metadata of natter's.
	bot := &jetstream.ObjectInfo{ObjectMeta: jetstream.ObjectMeta{Name: "weekly-report-2026-12-07-chart-png"}}
	if got := MetaOf(bot); got.Uploader != "" || got.Name != bot.Name || got.Type != TypeBinary {
		t.Fatalf("MetaOf(bot) = %+v", got)
	}
}

func TestExpired(t *testing.T) {
	now := time.Now()
	up := Meta{Uploader: "alice", Target: RoomTarget("lobby"), Type: TypePNG, Name: "a"}
	info := func(m Meta, age time.Duration) *jetstream.ObjectInfo {
		return &jetstream.ObjectInfo{ObjectMeta: jetstream.ObjectMeta{Metadata: m.Metadata()}, ModTime: now.Add(-age)}
	}
	shared := up
	shared.Shared = true
	for _, tc := range []struct {
		what string
		info *jetstream.ObjectInfo
		want bool
	}{
		{"young", info(up, 59*time.Minute), false},
		{"old", info(up, 61*time.Minute), true},
		{"old but shared", info(shared, 61*time.Minute), false},
		{"old, a bot's", info(Meta{}, 61*time.Minute), false},
	} {
		if got := Expired(tc.info, time.Hour, now); got != tc.want {
			t.Errorf("%s: Expired = %v", tc.what, got)
		}
	}
}

func TestMetaSubject(t *testing.T) {
	if got := MetaSubject("ab"); got != "$O.CHAT_FILES.M.YWI=" {
		t.Fatalf("MetaSubject = %q", got)
	}
}

// The bucket keeps files as long as the history keeps messages, as many
// copies as the streams, up to the files' limit.
func TestBucketConfig(t *testing.T) {
	f := config.Defaults[config.Files]()
	r := config.Defaults[config.Retention]()
	r.MaxAge = 48 * time.Hour
	c := BucketConfig(f, r, 3)
	if c.Bucket != "CHAT_FILES" || c.TTL != 48*time.Hour || c.Replicas != 3 || c.MaxBytes != 5<<30 || c.Storage != jetstream.FileStorage {
		t.Fatalf("BucketConfig = %+v", c)
	}
}
