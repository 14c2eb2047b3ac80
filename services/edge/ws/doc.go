// Package ws is the edge's WebSocket wire: everything below "a client
// sent this text" and "send these events to this client". It accepts the
// connections, reads their requests and answers the handshake, reads
// frames, writes batches of events, pings, and closes.
//
// The API:
//
//   - NewServer(Config) and Server.Run(ctx, ln, h) serve a listener: Run
//     answers plain WebSocket requests itself (upgrade.go, request.go)
//     and hands the rest to h on net/http; the Server is the http.Handler
//     of the WebSocket requests net/http gets (ServeHTTP, with gorilla).
//   - Config.Admit decides on each request, given its Request (Host,
//     Origin, X-Forwarded-For, the peer, Query): a Refusal, answered in
//     HTTP, or the Handler of the connection, which is then upgraded.
//   - A Handler is told Open(c) with its *Conn before anything is read or
//     written, then Text(p) for each text message, then Closed(code,
//     reason) once, when the connection is let go of.
//   - A Conn takes Reply (an answer to the client's request: waits for
//     room, never cuts off), Push (a live event: never waits; cuts the
//     connection off with 1008 when SendQueue live events are queued),
//     Close and CutOff. Closing and Heard tell its state; Full and
//     WaitSpace let a handler that holds a lock of its own wait for room
//     with it released.
//   - Server.Queued sums the send queues, for a stats answer.
//     Server.Unserved and Conn.Take make and empty a connection without
//     a socket: for the tests and benchmarks of what a handler queues.
//   - frame.go: the frames of RFC 6455 as a server reads and writes them,
//     and the close codes. poll_linux.go (epoll), poll_portable.go
//     elsewhere (a goroutine per connection), poll_common.go: the poller
//     that reads many connections without a goroutine each.
//
// Ownership and stopping:
//
//   - Run owns the accept loop (upgrade.go), the HTTP server that serves
//     what the handshake hands on, the poller, the flushers (flush.go)
//     and the pinger (ping.go), and through WaitGroups the handshakes'
//     timeouts (timers), every connection until it is let go of (served)
//     and the goroutines of its writing (writers). When its context ends
//     it stops accepting, shuts HTTP down, aborts the handshakes in
//     progress and waits for their timeouts, runs Config.BeforeClose,
//     closes every connection with 1001 and waits for them to be let go
//     of (at most 3 s, then closes their sockets), then stops the
//     flushers, waits for the writers, and closes the poller (which waits
//     for its readers) and the pinger. Run returns after all of them.
//   - A connection has no goroutine of its own. Its request is read by
//     the poller's turns (handshake), then its frames (Conn.readable): the
//     poller runs a turn on a pool goroutine when the socket has
//     something to read, one turn at a time per connection, so the
//     reader is the only reader of the socket and hands the handler its
//     messages one at a time and in order. A turn that waits (a handler
//     waiting on NATS) holds a pool goroutine, not the other connections.
//   - Writing: what is queued is written by the connection's flusher,
//     which writes to each connection in turn without waiting; a
//     connection whose socket is full is taken over by a slow writer
//     goroutine until it has caught up; the one that finds it closing
//     starts finish, which sends the close frame and closes the socket.
//     One of the three owns the socket at a time (flush.go). Pongs and
//     close frames come from slots of their own (the latest pong, the
//     close code), not from the send queue.
//   - A connection is let go of (Handler.Closed) by whichever of its two
//     ends comes second: the end of its reading or finish.
//   - The send queue is bounded: a connection with SendQueue live events
//     queued is cut off (close 1008), and nobody waits for it; a reply
//     waits for room, so a client that floods requests slows itself.
//   - A watched socket belongs to its owner, who closes it; the poller
//     never does. Watch.Read and Watch.Write never wait: Read is for the
//     reader, in its turn; Write for one writer at a time.
//
// Locks: Server.mu guards the connections, handshakes and stopping;
// Conn.mu a connection's queue, close state and writer flags (space, a
// sync.Cond on it, lets a reply wait for room); flusher.mu a flusher's
// list. Order when nested: Server.mu, then Conn.mu, then flusher.mu. A
// handler may hold a lock of its own while it calls Push, Close or
// CutOff (the edge holds its session's lock): the wire never calls a
// handler with one of its locks held. Reply and WaitSpace wait, so a
// handler calls them holding none of the locks its pushes are made under.
// No lock is held while writing to a socket.
//
// The frame reader does not check that text is UTF-8: the connection
// does, before Text (close 1007).
package ws
