package remotesecret

import (
	"strings"
	"testing"
)

func kubeconfig(user string) string {
	return kubeconfigFor(`{server: "https://198.18.2.1:6443", certificate-authority-data: ""}`, user)
}

func kubeconfigFor(cluster, user string) string {
	return `apiVersion: v1
kind: Config
current-context: c
clusters:
- name: c
  cluster: ` + cluster + `
contexts:
- name: c
  context: {cluster: c, user: u}
users:
- name: u
  user:
` + user
}

func TestRestConfigRefusesUnsafeKubeconfigs(t *testing.T) {
	tests := []struct {
		name, kubeconfig, wantErr string
	}{
		{"a bearer token is accepted", kubeconfig("    token: abc\n"), ""},
		{"an empty kubeconfig is refused", "", "empty"},
		{"garbage is refused", "not yaml: [", "does not parse"},
		{"an exec plugin is refused", kubeconfig("    exec: {command: /bin/evil, apiVersion: client.authentication.k8s.io/v1}\n"), "exec credential plugin"},
		{"a token file is refused", kubeconfig("    tokenFile: /var/run/secrets/token\n"), "token file"},
		{"client certificate paths are refused", kubeconfig("    client-certificate: /etc/cert.pem\n    client-key: /etc/key.pem\n"), "client certificate files"},
		{"an auth provider other than oidc is refused", kubeconfig("    auth-provider: {name: gcp}\n"), `auth provider "gcp"`},
		{"insecure-skip-tls-verify is refused", kubeconfigFor(`{server: "https://198.18.2.1:6443", insecure-skip-tls-verify: true}`, "    token: abc\n"), "insecure-skip-tls-verify"},
		{"a plain http server is refused", kubeconfigFor(`{server: "http://198.18.2.1:8080"}`, "    token: abc\n"), "plain http"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := RESTConfig([]byte(tt.kubeconfig))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
		})
	}
}
