package ws

import "golang.org/x/sys/unix"

// What both pollers share: the states of a watch and its reads and
// writes, which never wait. poll_linux.go is the poller of Linux (epoll);
// poll_portable.go the one of other systems.

// The states of a Watch.
const (
	armed    int32 = iota // waiting for the socket
	running               // its reader runs
	stopping              // Stop came while the reader ran
	stopped               // let go of
)

// Read reads what the socket holds into buf without waiting: 0 and
// unix.EAGAIN when it holds nothing, io.EOF-like 0 and nil at its end.
func (w *Watch) Read(buf []byte) (n int, err error) {
	cerr := w.rc.Read(func(fd uintptr) bool {
		n, err = unix.Read(int(fd), buf)
		return true // never wait: the poller does
	})
	if cerr != nil {
		return 0, cerr
	}
	if n < 0 {
		n = 0
	}
	return n, err
}

// Write writes what the socket takes of buf without waiting: a short
// count, and perhaps unix.EAGAIN, when its buffer is full.
func (w *Watch) Write(buf []byte) (n int, err error) {
	cerr := w.rc.Write(func(fd uintptr) bool {
		n, err = unix.Write(int(fd), buf)
		return true // never wait: a slow writer does
	})
	if cerr != nil {
		return 0, cerr
	}
	if n < 0 {
		n = 0
	}
	return n, err
}

// Hand gives the watch to another reader, from the reader at the end of a
// turn (before its Resume): the next turns run fn.
func (w *Watch) Hand(fn func(*Watch)) {
	w.fn = fn // read by the next turn, after Resume's CompareAndSwap
}
