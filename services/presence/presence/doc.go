// Package presence turns the edges' session reports into per-user room
// presence: a user's first session in a room announces a join on
// chat.room.<room>.presence, the last one to go a leave. It answers who,
// expires the sessions of an edge whose heartbeats stop, and repairs its
// view by asking an edge for its full state (a paged sync) whenever the
// edge's heartbeat digest differs from it.
//
// Each replica is the service natter-presence on the NATS services
// framework (`nats micro ls`), its role and what it knows in its stats
// answer (Stats); the active one has who as its endpoint. The framework
// cannot take an endpoint away, so a replica that goes live or stops
// leading registers again, as a new instance.
//
// Ownership and stopping:
//
//   - Run's goroutine is the loop: the only one that reads or changes the
//     view (state), and the only reader of the channel every subscription
//     delivers into (reports, heartbeats, sync pages, and who, which the
//     who endpoint's handler hands on). One channel
//     keeps NATS's order: an edge's reports, heartbeats and sync pages are
//     applied in the order the edge published them, which is what makes a
//     digest comparison exact.
//   - The elector goroutine holds or watches the leader key in the
//     CHAT_PRESENCE bucket (leader.go) and tells the loop when this replica
//     leads or stops leading. It makes every blocking bucket call of the
//     election, so the loop never waits on the network. Its first call
//     creates the bucket, or updates it to the configured replicas; NATS
//     servers that can never hold them make it stop the loop, and Run
//     returns that refusal once its goroutines have ended.
//   - The writer goroutine stores, for the leader, what it announces per
//     room, one batch at a time, publishes each room's events right after
//     its write, and tells the loop what failed. It acts only within the
//     lease the elector sets (leaseUntil), which ends before a standby may
//     take the lead.
//   - When Run's context ends, the loop stops, the leader's last batch is
//     written (at most 2 s), the writer stops and is waited for, and only
//     then the elector gives the leader key up so that a standby takes
//     over at once. Run returns after both goroutines have ended.
package presence
