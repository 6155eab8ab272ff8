package container

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestCommand(t *testing.T) {
	tests := []struct {
		name          string
		image         string
		command, args []string
		want          []string
	}{
		{"command replaces the curl entrypoint", "docker.io/curlimages/curl:8.5.0", []string{"sleep", "3650d"}, nil, []string{"sleep", "3650d"}},
		{"args follow the curl entrypoint", "curlimages/curl", nil, []string{"-s", "http://x"}, []string{"curl", "-s", "http://x"}},
		{"busybox defaults to sh", "docker.io/library/busybox:1.36@sha256:abc", nil, nil, []string{"sh"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Command(tt.image, tt.command, tt.args)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestUnknownImageNamesItAndTheKnownOnes(t *testing.T) {
	_, err := Command("nginx:1.25", nil, nil)
	var u ErrUnknownImage
	if !errors.As(err, &u) || !strings.Contains(err.Error(), `"nginx:1.25"`) || !strings.Contains(err.Error(), "curlimages/curl") {
		t.Fatalf("got %v", err)
	}
	// isthmus's images run from the registry, never as the host's binary.
	for _, img := range []string{"isthmus/isthmus:1.0", "ghcr.io/isthmus-mesh/isthmus:dev", "isthmus/demo-app"} {
		if _, err := Command(img, nil, []string{"demo-app", "profile"}); !errors.As(err, &u) {
			t.Errorf("%s: %v, want no host program", img, err)
		}
	}
}
