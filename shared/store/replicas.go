package store

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStream's error codes for replicas it cannot place (nats-server's
// errors.json); nats.go names neither.
const (
	// errCodeReplicasNotSupported: "replicas > 1 not supported in
	// non-clustered mode", from a server that is not in a cluster.
	errCodeReplicasNotSupported jetstream.ErrorCode = 10074
	// errCodeNoPeers: the cluster found too few servers for the group. The
	// description lists the reasons it discarded servers (", peer
	// offline", ", insufficient storage", ...); with none listed, every
	// server the cluster knows was taken and there were not enough.
	errCodeNoPeers jetstream.ErrorCode = 10005
)

// noPeersBare is the description of errCodeNoPeers with no reason listed.
const noPeersBare = "no suitable peers for placement"

// MaxReplicas is the most copies JetStream keeps of a stream.
const MaxReplicas = 5

// CheckReplicas refuses, before any server is asked, a number of copies
// that no NATS cluster keeps.
func CheckReplicas(n int) error {
	switch {
	case n < 1:
		return fmt.Errorf("CHAT_STREAM_REPLICAS=%d: at least 1 copy of each stream is kept", n)
	case n > MaxReplicas:
		return fmt.Errorf("CHAT_STREAM_REPLICAS=%d: JetStream keeps at most %d copies of a stream", n, MaxReplicas)
	}
	return nil
}

// ReplicasError is the refusal of CHAT_STREAM_REPLICAS by NATS servers
// that can never hold that many copies: retrying cannot help, the setting
// must change.
type ReplicasError struct {
	Replicas int
	// Why says what the servers lack.
	Why string
	// Err is JetStream's answer.
	Err error
}

func (e *ReplicasError) Error() string {
	return fmt.Sprintf("CHAT_STREAM_REPLICAS=%d but %s: %v", e.Replicas, e.Why, e.Err)
}

func (e *ReplicasError) Unwrap() error { return e.Err }

// ReplicasRefused returns a *ReplicasError when err, JetStream's answer to
// creating or updating a stream or bucket of replicas copies on nc, says
// the servers can never hold that many; nil when err may pass (JetStream
// not ready yet, a cluster electing its leader, a server away), so the
// caller retries.
//
// A server outside any cluster says so (10074). A cluster answers "no
// suitable peers for placement" (10005) both when it has fewer servers than
// replicas and when it is still forming, before its last servers have
// joined once: a server that joined and then went down is still counted,
// and a new stream is placed without it. So that a forming cluster is not
// refused, the answer counts only when the client also knows fewer servers
// than replicas: the URLs it was given and the ones the servers announce.
// Giving CHAT_NATS_URL every server of the cluster keeps a forming
// cluster from ever being refused.
func ReplicasRefused(err error, replicas int, nc *nats.Conn) error {
	apiErr := apiError(err)
	if apiErr == nil {
		return nil
	}
	switch {
	case apiErr.ErrorCode == errCodeReplicasNotSupported:
		return &ReplicasError{Replicas: replicas, Why: "the NATS server is not in a cluster, and keeps one copy only", Err: err}
	case apiErr.ErrorCode == errCodeNoPeers && apiErr.Description == noPeersBare:
		if n := knownServers(nc); n < replicas {
			return &ReplicasError{Replicas: replicas,
				Why: fmt.Sprintf("the NATS cluster has fewer servers than that (%d known)", n), Err: err}
		}
	}
	return nil
}

// apiError digs JetStream's answer out of err, nil when it is none.
func apiError(err error) *jetstream.APIError {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr
	}
	var jsErr jetstream.JetStreamError
	if errors.As(err, &jsErr) {
		return jsErr.APIError()
	}
	return nil
}

// knownServers counts the distinct servers nc knows of: those it was
// given and those the cluster announced. A server known under two names
// (a host name and an address) counts twice, which errs on the side of
// retrying.
func knownServers(nc *nats.Conn) int {
	hosts := make(map[string]struct{})
	for _, s := range nc.Servers() {
		if u, err := url.Parse(s); err == nil {
			hosts[u.Host] = struct{}{}
		}
	}
	return len(hosts)
}
