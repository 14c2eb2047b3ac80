// Package wsclient is the load tools' end of a WebSocket (RFC 6455),
// written by hand: gorilla's Dialer cost the generator a third of its CPU
// per connect and made it, not the server, the limit of the connect rate.
// loadgen and the soak both use it.
package wsclient

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"
)

// Conn is one client connection: one reader and any number of writers.
// The read buffer is kept between frames, so a message read is valid
// until the next ReadMessage.
type Conn struct {
	c    net.Conn
	br   *bufio.Reader // only the reader uses it
	rbuf []byte        // only the reader uses it: the last message read

	wmu  sync.Mutex
	wbuf []byte // guarded by wmu
	key  uint32 // guarded by wmu: the next mask key
}

// CloseError is a close frame from the server, with its code.
type CloseError struct{ Code int }

func (e *CloseError) Error() string { return fmt.Sprintf("websocket: close %d", e.Code) }

// Dial opens a WebSocket to ws://addr+path from src (nil: any).
func Dial(ctx context.Context, src *net.TCPAddr, addr, path string) (*Conn, error) {
	d := net.Dialer{Timeout: 30 * time.Second}
	if src != nil {
		d.LocalAddr = src // a nil *TCPAddr in the interface would not be nil
	}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	w, err := handshake(c, addr, path)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return w, nil
}

func handshake(c net.Conn, addr, path string) (*Conn, error) {
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var nonce [16]byte
	binary.LittleEndian.PutUint64(nonce[:], rand.Uint64())
	binary.LittleEndian.PutUint64(nonce[8:], rand.Uint64())
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(c, 16<<10)
	status, err := br.ReadSlice('\n')
	if err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 101 ")) {
		code := 0
		if f := bytes.Fields(status); len(f) > 1 {
			code, _ = strconv.Atoi(string(f[1]))
		}
		return nil, fmt.Errorf("handshake: %s (HTTP %d)", bytes.TrimSpace(status), code)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	accept := []byte("Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]))
	accepted := false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return nil, fmt.Errorf("handshake: %w", err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		if len(line) == len(accept) && bytes.EqualFold(line[:22], accept[:22]) && bytes.Equal(line[22:], accept[22:]) {
			accepted = true
		}
	}
	if !accepted {
		return nil, errors.New("handshake: no or wrong Sec-WebSocket-Accept")
	}
	_ = c.SetDeadline(time.Time{})
	return &Conn{c: c, br: br, key: rand.Uint32()}, nil
}

// WriteText sends one text message, masked as a client's must be.
func (w *Conn) WriteText(p []byte) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	return w.writeLocked(0x1, p)
}

// CloseNormal sends a close frame with 1000 and closes the connection
// without waiting for the server's echo: the reader sees it or an error.
func (w *Conn) CloseNormal() error {
	w.wmu.Lock()
	err := w.writeLocked(0x8, []byte{0x03, 0xE8})
	w.wmu.Unlock()
	// Half a second for the echo, then the socket goes either way.
	_ = w.c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	return err
}

func (w *Conn) writeLocked(op byte, p []byte) error {
	b := append(w.wbuf[:0], 0x80|op)
	switch n := len(p); {
	case n <= 125:
		b = append(b, 0x80|byte(n))
	case n <= 0xFFFF:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	w.key = w.key*1664525 + 1013904223
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], w.key)
	b = append(b, key[:]...)
	start := len(b)
	b = append(b, p...)
	for i := range p {
		b[start+i] ^= key[i&3]
	}
	w.wbuf = b
	_ = w.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := w.c.Write(b)
	return err
}

// ReadMessage returns the next data message, its fragments joined; it is
// valid until the next call. It answers pings; a close frame ends it with
// a *CloseError.
func (w *Conn) ReadMessage() ([]byte, error) {
	msg := w.rbuf[:0]
	for {
		var head [2]byte
		if _, err := io.ReadFull(w.br, head[:]); err != nil {
			return nil, err
		}
		fin, op := head[0]&0x80 != 0, head[0]&0x0F
		n := uint64(head[1] & 0x7F)
		switch n {
		case 126:
			var ext [2]byte
			if _, err := io.ReadFull(w.br, ext[:]); err != nil {
				return nil, err
			}
			n = uint64(binary.BigEndian.Uint16(ext[:]))
		case 127:
			var ext [8]byte
			if _, err := io.ReadFull(w.br, ext[:]); err != nil {
				return nil, err
			}
			n = binary.BigEndian.Uint64(ext[:])
		}
		if head[1]&0x80 != 0 || n > 64<<20 {
			return nil, errors.New("websocket: a masked or oversized frame from the server")
		}
		if op >= 0x8 { // control frames: at most 125 bytes, never fragmented
			p := make([]byte, n)
			if _, err := io.ReadFull(w.br, p); err != nil {
				return nil, err
			}
			switch op {
			case 0x8:
				code := 1005
				if len(p) >= 2 {
					code = int(binary.BigEndian.Uint16(p))
				}
				return nil, &CloseError{Code: code}
			case 0x9: // ping: pong, as gorilla's client does
				w.wmu.Lock()
				err := w.writeLocked(0xA, p)
				w.wmu.Unlock()
				if err != nil {
					return nil, err
				}
			}
			continue
		}
		start := len(msg)
		msg = append(msg, make([]byte, n)...)
		if _, err := io.ReadFull(w.br, msg[start:]); err != nil {
			return nil, err
		}
		if fin {
			w.rbuf = msg
			return msg, nil
		}
	}
}

// Close closes the connection without a close frame: to the server, a
// client whose network went away.
func (w *Conn) Close() error { return w.c.Close() }
