// Package auth holds the WebSocket tokens of docs/protocol.md: an
// HS256 JWT whose sub is the user name and whose exp is in the future.
// The checks are github.com/golang-jwt/jwt/v5's; this package only says
// which: HS256 alone (alg none and every other algorithm are refused),
// exp required, and a sub that passes the name rules.
package auth

import (
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/natter-chat/natter/shared/names"
)

// ErrToken is wrapped by every refusal of Check.
var ErrToken = errors.New("invalid token")

// MinSecret is the shortest secret taken: HS256 with a short secret can
// be brute-forced offline from any token it signed.
const MinSecret = 32

// CheckSecret refuses a secret shorter than MinSecret bytes.
func CheckSecret(secret []byte) error {
	if len(secret) < MinSecret {
		return fmt.Errorf("auth: the secret must be at least %d bytes (it has %d)", MinSecret, len(secret))
	}
	return nil
}

// Sign returns a token for user that expires after ttl.
func Sign(secret []byte, user string, ttl time.Duration, now time.Time) (string, error) {
	if err := CheckSecret(secret); err != nil {
		return "", err
	}
	if !names.ValidUser(user) {
		return "", fmt.Errorf("auth: user %q breaks the name rules", user)
	}
	if ttl <= 0 {
		return "", errors.New("auth: the lifetime must be positive")
	}
	claims := jwt.RegisteredClaims{
		Subject:   user,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}

// Check returns the user of token, or an error wrapping ErrToken: a
// missing, malformed or forged token, one signed with anything but HS256,
// one without exp or past it, or one whose sub is not a valid user name.
func Check(secret []byte, token string) (string, error) {
	if CheckSecret(secret) != nil {
		return "", fmt.Errorf("%w: the server's secret is too short", ErrToken)
	}
	if token == "" {
		return "", fmt.Errorf("%w: none given", ErrToken)
	}
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
	)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrToken, err)
	}
	if !names.ValidUser(claims.Subject) {
		return "", fmt.Errorf("%w: sub breaks the name rules", ErrToken)
	}
	return claims.Subject, nil
}
