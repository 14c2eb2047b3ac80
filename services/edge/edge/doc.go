// Package edge holds natter's WebSocket clients and connects them to NATS.
//
// Ownership and stopping:
//
//   - Run owns the listener's accept loop (upgrade.go), the HTTP server
//     that serves what the edge's handshake hands on, the poller
//     (services/edge/ws), the flushers (flush.go), the hub's dispatch
//     goroutine, the pinger (ping.go) and, through WaitGroups, the
//     handshakes' timeouts (timers), every connection (handlers) and the
//     goroutines of its writing (writers). When its context ends it stops
//     accepting, aborts the handshakes in progress and waits for their
//     timeouts, closes every client with 1001, waits for them to be let
//     go of, stops the flushers, the writers and the poller, then drops
//     the subscriptions and stops the dispatcher.
//   - A connection has no goroutine of its own. Its request is read by
//     the poller's turns (handshake), then its frames (client.readable):
//     the poller runs a turn on a pool goroutine when the socket has
//     something to read, one turn at a time per connection, so the
//     reader is the only reader of the socket and answers the requests
//     one at a time and in order. A turn that waits (a post waiting for
//     its ack) holds a pool goroutine, not the other connections.
//   - Writing: what is queued for a client is written by its flusher,
//     which writes to each client in turn without waiting; a client whose
//     socket is full is taken over by a slow writer goroutine until it
//     has caught up; the one that finds the client closing starts finish,
//     which sends the close frame and closes the socket. One of the three
//     owns the socket at a time (flush.go). Pongs and close replies are
//     written by the same owner, from slots of their own (the latest
//     pong, the close code), not from the event queue.
//   - A connection is let go of (its rooms left, its address released)
//     by whichever of its two ends comes second: the end of its reading
//     or finish.
//   - The hub keeps one NATS subscription per room with local members, and
//     two per user with local sessions (its dms, dm.go). All of them
//     deliver into one channel, read by one dispatch goroutine, so
//     thousands of rooms cost no goroutine each. The dispatcher encodes an
//     event once per room and appends it to each member's send queue; it
//     never writes to a socket, so a slow client cannot hold it up.
//   - A client's send queue is bounded: when it is full the client is cut
//     off (close 1008), and nobody else waits for it.
//   - When a room's stored messages show a gap (repair.go), the dispatcher
//     holds the room and starts a reader goroutine for the missing ones;
//     the reader hands its result back to the dispatcher, which delivers
//     it; conversations alike. The dispatcher waits for its readers (and
//     its reader of the dm floor) before it returns.
//   - The reporter goroutine (report.go) owns the session table reported
//     to presence; Run stops it after the clients are gone, so their
//     leaves go out first.
//   - Run registers the edge on the NATS services framework (natter-edge,
//     its figures in Stats) before the reporter's first heartbeat; the
//     sync endpoint's handler, on a nats.go goroutine, only hands
//     presence's requests to the reporter (dropping them when it is
//     behind). Run stops the service before it stops the reporter.
//
// Locks: hub.mu guards the room and user tables; client.mu guards a
// client's send queue and its room and conversation states. The
// dispatcher takes hub.mu only to read a room's member list (copy on
// write; raising the room's newest seq first) and then each member's mu in
// turn; no lock is held while writing to a socket or publishing to NATS.
package edge
