package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/natter-chat/natter/shared/names"
)

var secret = []byte("test secret, long enough to be a real one")

func sign(t testing.TB, method jwt.SigningMethod, key any, claims jwt.Claims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Every refusal of the contract: no token, forged, expired, without exp,
// alg none, other algorithms, a sub that is not a user name.
func TestCheck(t *testing.T) {
	now := time.Now()
	good, err := Sign(secret, "alice", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if user, err := Check(secret, good); err != nil || user != "alice" {
		t.Fatalf("a good token: %q, %v", user, err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	future := jwt.NewNumericDate(now.Add(time.Hour))
	claims := func(sub string, exp *jwt.NumericDate) jwt.RegisteredClaims {
		return jwt.RegisteredClaims{Subject: sub, ExpiresAt: exp}
	}
	forged, err := Sign([]byte("another secret, as long as the first one"), "alice", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := Sign(secret, "alice", time.Minute, now.Add(-time.Hour))
	tests := []struct {
		name, token string
	}{
		{"none", ""},
		{"not a JWT", "hello"},
		{"forged", forged},
		{"tampered payload", good[:strings.Index(good, ".")+1] + "eyJzdWIiOiJtYWxsb3J5IiwiZXhwIjo5OTk5OTk5OTk5fQ" + good[strings.LastIndex(good, "."):]},
		{"expired", expired},
		{"without exp", sign(t, jwt.SigningMethodHS256, secret, claims("alice", nil))},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims("alice", future))},
		{"HS384", sign(t, jwt.SigningMethodHS384, secret, claims("alice", future))},
		{"HS512", sign(t, jwt.SigningMethodHS512, secret, claims("alice", future))},
		{"ES256", sign(t, jwt.SigningMethodES256, ec, claims("alice", future))},
		{"sub missing", sign(t, jwt.SigningMethodHS256, secret, claims("", future))},
		{"sub not a name", sign(t, jwt.SigningMethodHS256, secret, claims("al.ice", future))},
		{"sub too long", sign(t, jwt.SigningMethodHS256, secret, claims(strings.Repeat("a", 33), future))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if user, err := Check(secret, tc.token); !errors.Is(err, ErrToken) || user != "" {
				t.Errorf("user %q, err %v; want a refusal", user, err)
			}
		})
	}
}

func TestSignRefuses(t *testing.T) {
	for _, tc := range []struct {
		name     string
		secret   []byte
		user     string
		lifetime time.Duration
	}{
		{"empty secret", nil, "alice", time.Hour},
		{"short secret", []byte("short"), "alice", time.Hour},
		{"bad user", secret, "a b", time.Hour},
		{"zero lifetime", secret, "alice", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tok, err := Sign(tc.secret, tc.user, tc.lifetime, time.Now()); err == nil {
				t.Errorf("signed %q", tok)
			}
		})
	}
	good, _ := Sign(secret, "alice", time.Hour, time.Now())
	if _, err := Check(nil, good); err == nil {
		t.Error("Check with an empty secret accepted a token")
	}
}

// FuzzCheck feeds Check arbitrary tokens: it never panics, and whatever it
// accepts carries a valid user name and verifies with the secret.
func FuzzCheck(f *testing.F) {
	good, err := Sign(secret, "alice", 100*365*24*time.Hour, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add("")
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.")
	f.Fuzz(func(t *testing.T, token string) {
		user, err := Check(secret, token)
		if err != nil {
			if !errors.Is(err, ErrToken) || user != "" {
				t.Fatalf("refusal %v with user %q", err, user)
			}
			return
		}
		if !names.ValidUser(user) {
			t.Fatalf("accepted user %q", user)
		}
		if _, err := Check([]byte("another secret, as long as the first one"), token); err == nil {
			t.Fatalf("token %q verifies with any secret", token)
		}
	})
}
