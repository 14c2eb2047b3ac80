// Package ws is the edge's WebSocket wire: the frames of RFC 6455 as a
// server reads and writes them (frame.go), and a poller that reads many
// connections without a goroutine each (poll.go).
//
// Ownership and stopping: Poller.Run is the one goroutine that waits on
// epoll; the caller starts it and ends it with Close, which also waits
// for the pool's goroutines, so Close returns only after every reader it
// ran has returned. A watched socket belongs to its owner, who closes it;
// the poller never does.
package ws
