// Package ws is the edge's WebSocket wire: the frames of RFC 6455 as a
// server reads and writes them (frame.go), and a poller that reads many
// connections without a goroutine each (poll_linux.go, with epoll;
// poll_portable.go elsewhere, with a goroutine per connection;
// poll_common.go what both share).
//
// Ownership and stopping: Poller.Run is the caller's goroutine (on Linux
// the one that waits on epoll); the caller ends it with Close, which
// also waits for the goroutines that run the readers, so Close returns
// only after every reader it ran has returned. A watched socket belongs
// to its owner, who closes it; the poller never does. Read and Write
// never wait: Read is for the reader, in its turn; Write for one writer
// at a time (it takes the socket's write lock).
//
// The frame reader does not check that text is UTF-8: its caller does
// (the edge closes with 1007).
package ws
