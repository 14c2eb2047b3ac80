package main

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

// wsConn is the generator's end of a WebSocket (RFC 6455): the handshake
// written by hand and frames read and written directly. gorilla's Dialer
// builds an http.Request and parses an http.Response for each connection,
// which made the generator, not the server, the limit of a connect burst
// (F): about a third of its CPU per connect went there.
type wsConn struct {
	c  net.Conn
	br *bufio.Reader // only the reader uses it

	wmu  sync.Mutex
	wbuf []byte // guarded by wmu
	key  uint32 // guarded by wmu: the next mask key
}

// closeError is a close frame from the server, with its code.
type closeError struct{ code int }

func (e *closeError) Error() string { return fmt.Sprintf("websocket: close %d", e.code) }

// dialWS opens a WebSocket to ws://addr+path from src (nil: any).
func dialWS(ctx context.Context, src *net.TCPAddr, addr, path string) (*wsConn, error) {
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

func handshake(c net.Conn, addr, path string) (*wsConn, error) {
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
	br := bufio.NewReaderSize(c, 4096)
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
	return &wsConn{c: c, br: br, key: rand.Uint32()}, nil
}

// WriteText sends one text message, masked as a client's must be.
func (w *wsConn) WriteText(p []byte) error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	return w.writeLocked(0x1, p)
}

func (w *wsConn) writeLocked(op byte, p []byte) error {
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

// ReadMessage returns the next data message, its fragments joined. It
// answers pings; a close frame ends it with a *closeError.
func (w *wsConn) ReadMessage() ([]byte, error) {
	var msg []byte
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
		p := make([]byte, n)
		if _, err := io.ReadFull(w.br, p); err != nil {
			return nil, err
		}
		switch op {
		case 0x8: // close
			code := 1005
			if len(p) >= 2 {
				code = int(binary.BigEndian.Uint16(p))
			}
			return nil, &closeError{code: code}
		case 0x9: // ping: pong, as gorilla's client does
			w.wmu.Lock()
			err := w.writeLocked(0xA, p)
			w.wmu.Unlock()
			if err != nil {
				return nil, err
			}
			continue
		case 0xA: // pong
			continue
		}
		if fin && msg == nil {
			return p, nil
		}
		msg = append(msg, p...)
		if fin {
			return msg, nil
		}
	}
}

// Close closes the connection without a close frame, as gorilla's Close.
func (w *wsConn) Close() error { return w.c.Close() }
