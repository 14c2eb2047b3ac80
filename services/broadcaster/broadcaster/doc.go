// Package broadcaster stores posted room messages and dms and gets them
// fanned out.
//
// It is a queue group on chat.in.room.> and chat.in.dm.*, so any number of
// replicas share the posts: the two endpoints, room and dm, of the service
// natter-broadcaster, which `nats micro ls` lists with their request and
// error counts (a post refused before it is stored is an error) and the
// broadcaster's own figures (Stats). For each post it validates again (it never
// trusts an edge), stamps ts and publishes the message asynchronously to
// its JetStream stream: a room message to CHAT, whose RePublish fans it
// out on chat.room.<room>.msg, a dm to CHAT_DM, whose RePublish fans it
// out on chat.dm.<a>.<b>; each with its seq, in store order. Async
// publishes from one connection are stored in the order they were sent,
// so a bot's posts keep their order too.
//
// A post that shares a file (its file field) is checked against the
// file's metadata in the object store bucket CHAT_FILES (files.go): the
// uploader, the room or conversation it was uploaded for, not expired;
// the first share marks the upload shared, and the stored event carries
// the file's id, name, size and type.
//
// Before it serves, Run creates both streams and the file bucket, or
// updates them, with the configured replicas, retrying every second until NATS answers (NATS may
// start later, a cluster may be electing or missing a server). NATS
// servers that can never hold that many replicas end Run with an error
// instead (store.ReplicasRefused).
//
// Goroutines: nats.go runs each endpoint's handler (one goroutine per
// subscription, owned by the connection, so a room post and a dm may be
// validated at the same moment; each endpoint keeps its own order, and a
// room's or a conversation's posts come on one of them); Run owns the
// acker goroutine, which waits for each store acknowledgement in order
// and answers the posting edge; Run also owns the sweep, which deletes
// the uploads never shared within their TTL. When its context ends Run stops the
// service and waits for the posts already taken to be handled (at most
// the connection's drain timeout in all), then lets the acker answer what
// was accepted (at most two more seconds), and returns after it has
// ended. A callback still running after a drain that timed out answers
// its post unavailable itself.
package broadcaster
