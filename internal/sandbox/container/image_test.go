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
		{"an isthmus image runs this binary with its args", "ghcr.io/isthmus-mesh/isthmus:dev", nil, []string{"demo-app", "profile"}, []string{"/bin/isthmus", "demo-app", "profile"}},
		{"a command naming isthmus runs this binary", "isthmus/isthmus:1.0", []string{"isthmus", "proxy"}, []string{"sidecar"}, []string{"/bin/isthmus", "proxy", "sidecar"}},
		{"command replaces the curl entrypoint", "docker.io/curlimages/curl:8.5.0", []string{"sleep", "3650d"}, nil, []string{"sleep", "3650d"}},
		{"args follow the curl entrypoint", "curlimages/curl", nil, []string{"-s", "http://x"}, []string{"curl", "-s", "http://x"}},
		{"busybox defaults to sh", "docker.io/library/busybox:1.36@sha256:abc", nil, nil, []string{"sh"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Command(tt.image, tt.command, tt.args, "/bin/isthmus")
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
	_, err := Command("nginx:1.25", nil, nil, "/bin/isthmus")
	var u ErrUnknownImage
	if !errors.As(err, &u) || !strings.Contains(err.Error(), `"nginx:1.25"`) || !strings.Contains(err.Error(), "curlimages/curl") {
		t.Fatalf("got %v", err)
	}
}
