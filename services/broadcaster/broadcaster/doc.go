// Package broadcaster stores posted room messages and gets them fanned out.
//
// It is a queue group on chat.in.room.>, so any number of replicas share
// the posts. For each post it validates again (it never trusts an edge),
// stamps ts and publishes the message asynchronously to the JetStream
// stream, whose RePublish fans it out on chat.room.<room>.msg with its seq
// in store order. Async publishes from one connection are stored in the
// order they were sent, so a bot's posts keep their order too.
//
// Goroutines: nats.go runs the subscription callback (one goroutine, owned
// by the connection); Run owns the acker goroutine, which waits for each
// store acknowledgement in order and answers the posting edge. Run drains
// the subscription when its context ends (at most the connection's drain
// timeout), then lets the acker answer what was accepted (at most two more
// seconds), and returns after it has ended. A callback still running after
// a drain that timed out answers its post unavailable itself.
package broadcaster
