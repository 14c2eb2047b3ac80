// Package edge holds natter's WebSocket clients and connects them to NATS.
//
// Ownership and stopping:
//
//   - Run owns the HTTP server, the hub's dispatch goroutine, the pinger
//     (ping.go) and, through a WaitGroup, every connection handler. When
//     its context ends it stops accepting, closes every client with 1001,
//     waits for their handlers, then drops the subscriptions and stops the
//     dispatcher.
//   - Each connection has a goroutine started by its HTTP handler (which
//     then returns, so net/http lets go of its buffers) and counted in the
//     same WaitGroup: the read pump, the only reader of the socket, which
//     also answers the requests, one at a time and in order. The writer
//     runs only while there is work, so an idle connection costs one
//     goroutine: started when something is queued (or the pinger asks for
//     a ping), it is the only writer of data frames, and ends after a
//     second without any. The read pump waits for the connection to be
//     closed (by the last writer) before returning.
//     Close frames go through gorilla's WriteControl, which is safe from
//     any goroutine.
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
//
// Locks: hub.mu guards the room and user tables; client.mu guards a
// client's send queue and its room and conversation states. The
// dispatcher takes hub.mu only to read a room's member list (copy on
// write; raising the room's newest seq first) and then each member's mu in
// turn; no lock is held while writing to a socket or publishing to NATS.
package edge
