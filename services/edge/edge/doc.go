// Package edge holds natter's chat sessions and connects them to NATS:
// who may connect, the sessions' rooms, dms, typing and posts, the
// fan-out of stored events to the local members of each room, and the
// sessions reported to presence. The WebSocket wire below it (accepting,
// the handshake, frames, the poller, batched writes, pings, closing) is
// services/edge/ws: the edge's gate admits each request (admit.go), and
// each session it admits is the handler of its connection (client.go).
// Files go up and come back over plain HTTP (files.go): an upload is
// admitted by the same gate and streamed into the object store bucket
// CHAT_FILES on its request's goroutine, a download streamed out of it.
//
// Ownership and stopping:
//
//   - Run owns the hub's dispatch goroutine, the reporter and the wire's
//     ws.Server.Run, which owns the accept loop, the poller, the
//     flushers, the pinger and every connection. When its context ends
//     the wire stops accepting, cancels Edge.ctx (BeforeClose: posts and
//     store reads in flight give up), closes every connection with 1001
//     and waits for them to be let go of; then Run stops the services
//     framework's endpoint and the reporter, drops the subscriptions and
//     stops the dispatcher.
//   - A session (client) has no goroutine of its own. The wire calls it
//     on its connection's reader: Open once, then Text for each text
//     message, whose requests it answers one at a time and in order (a
//     post waiting for its ack holds a pool goroutine, not the other
//     connections), then Closed once, when the connection is let go of:
//     the session leaves its rooms and gives back its address.
//   - The hub keeps one NATS subscription per room with local members, and
//     two per user with local sessions (its dms, dm.go). All of them
//     deliver into one channel, read by one dispatch goroutine, so
//     thousands of rooms cost no goroutine each. The dispatcher encodes an
//     event once per room and pushes it to each member's connection
//     (ws.Conn.Push); it never writes to a socket, so a slow client
//     cannot hold it up.
//   - A connection's send queue is bounded: when it is full the client is
//     cut off (close 1008), and nobody else waits for it. So are the
//     events a session holds while it joins a room.
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
// Locks: gate.mu guards the per-address counts; whoShare.mu the who
// answers shared between joins (who.go); hub.mu the room and user tables;
// client.mu a session's room and conversation states. The dispatcher
// takes hub.mu only to read a room's member list (copy on write; raising
// the room's newest seq first) and then each member's mu in turn, and
// pushes with it held, so that a room's seq and what was queued move
// together: client.mu comes before the connection's own lock (inside
// ws.Conn's methods), never after. A session waits for room in its queue
// (replies) with mu released. No lock is held while writing to a socket
// or publishing to NATS.
package edge
