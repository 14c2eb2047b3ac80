package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// everyGroup embeds every group, as a binary's configuration does.
type everyGroup struct {
	NATS
	Embedded
	Web
	Limits
	Presence
	Retention
	Replication
	Profiling
	Log
}

// emptyEnvironment unsets every variable for the rest of the test.
func emptyEnvironment(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v) // restores it when the test ends
		os.Unsetenv(k)
	}
}

func TestDefaultsAreWhatAnEmptyEnvironmentLoads(t *testing.T) {
	emptyEnvironment(t)
	var loaded everyGroup
	if err := Load(&loaded); err != nil {
		t.Fatal(err)
	}
	if got := Defaults[everyGroup](); !reflect.DeepEqual(got, loaded) {
		t.Errorf("Defaults:\n%+v\nLoad from an empty environment:\n%+v", got, loaded)
	}
	if got := Defaults[Limits](); got != loaded.Limits {
		t.Errorf("Defaults[Limits]:\n%+v\nLoad from an empty environment:\n%+v", got, loaded.Limits)
	}
}

func TestDefaultsIgnoreTheEnvironment(t *testing.T) {
	emptyEnvironment(t)
	want := Defaults[everyGroup]()
	// Load reads both names; Defaults neither.
	t.Setenv(Prefix+"_MAX_ROOMS", "7")
	t.Setenv("LOG_LEVEL", "debug")
	var loaded everyGroup
	if err := Load(&loaded); err != nil {
		t.Fatal(err)
	}
	if loaded.MaxRooms != 7 || loaded.Level != "debug" {
		t.Fatalf("Load did not read the environment: MaxRooms %d, Level %q", loaded.MaxRooms, loaded.Level)
	}
	if got := Defaults[everyGroup](); !reflect.DeepEqual(got, want) {
		t.Errorf("with %s_MAX_ROOMS and LOG_LEVEL set, Defaults gave\n%+v\nwant\n%+v", Prefix, got, want)
	}
}

func TestDefaultsPanicOnABadTag(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("a default that is not a number did not panic")
		}
	}()
	Defaults[struct {
		Rooms int `default:"many"`
	}]()
}
