package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"the default pair is valid", DefaultConfig(), ""},
		{"no clusters is refused", Config{}, "at least one cluster"},
		{"a name that is not a DNS label is refused", Config{Clusters: []ClusterConfig{{Name: "Cluster_EKS", Network: "n1"}}}, `clusters[0].name "Cluster_EKS"`},
		{"duplicate names are refused", Config{Clusters: []ClusterConfig{{Name: "a", Network: "n1"}, {Name: "a", Network: "n2"}}}, "duplicate cluster name"},
		{"a missing network is refused with an example", Config{Clusters: []ClusterConfig{{Name: "a"}}}, "required (for example network1)"},
		{"two clusters on one network are refused", Config{Clusters: []ClusterConfig{{Name: "a", Network: "n1"}, {Name: "b", Network: "n1"}}}, `already used by cluster "a"`},
		{"both load balancer kinds are valid", Config{Clusters: []ClusterConfig{{Name: "a", Network: "n1", LoadBalancer: "hostname"}, {Name: "b", Network: "n2", LoadBalancer: "ip"}}}, ""},
		{"an unknown load balancer kind is refused with the valid ones", Config{Clusters: []ClusterConfig{{Name: "a", Network: "n1", LoadBalancer: "dns"}}}, `clusters[0].loadBalancer "dns": want "ip"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("clusters:\n- name: c1\n  network: n1\n- name: c2\n  network: n2\n- name: c3\n  network: n3\n"), 0o644)
	cfg, err := LoadConfig(good)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Clusters) != 3 || cfg.Clusters[2].Name != "c3" {
		t.Fatalf("got %+v", cfg)
	}
	if cfg.Clusters[0].Hostnames() {
		t.Fatal("a cluster that names no load balancer kind has hostname load balancers; the default is ip")
	}
	lb := filepath.Join(dir, "lb.yaml")
	os.WriteFile(lb, []byte("clusters:\n- name: c1\n  network: n1\n  loadBalancer: hostname\n"), 0o644)
	if cfg, err := LoadConfig(lb); err != nil || !cfg.Clusters[0].Hostnames() {
		t.Fatalf("loadBalancer: hostname: %+v %v", cfg, err)
	}
	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("clusters:\n- name: c1\n  netwrk: n1\n"), 0o644)
	if _, err := LoadConfig(typo); err == nil || !strings.Contains(err.Error(), "netwrk") {
		t.Fatalf("an unknown field must be named, got %v", err)
	}
	if _, _, err := cfg.Cluster("c9"); err == nil || !strings.Contains(err.Error(), `unknown cluster "c9"`) {
		t.Fatalf("unknown cluster error: %v", err)
	}
}

func TestDefaultConfigPlaysEKSAndAKS(t *testing.T) {
	c := DefaultConfig()
	if !c.Clusters[0].Hostnames() || c.Clusters[1].Hostnames() {
		t.Fatalf("cluster-eks must have hostname load balancers and cluster-aks IP ones: %+v", c.Clusters)
	}
}

func TestAddressesOf(t *testing.T) {
	a := AddressesOf(1)
	if a.Node.String() != "198.18.2.1" || a.LBPrefix.String() != "198.18.2.0/24" || a.APIServer != "198.18.2.1:6443" ||
		a.PodCIDR.String() != "100.65.0.0/16" || a.Services.String() != "100.97.0.0/16" {
		t.Fatalf("cluster 2 addresses: %+v", a)
	}
}

func TestResized(t *testing.T) {
	two := DefaultConfig()
	three := DefaultConfig()
	three.Clusters = append(three.Clusters, ClusterConfig{Name: "cluster-gke", Network: "network3"})
	swapped := Config{Clusters: []ClusterConfig{two.Clusters[1], two.Clusters[0]}}
	renetworked := DefaultConfig()
	renetworked.Clusters[1].Network = "network9"
	for _, tc := range []struct {
		name       string
		prev, next Config
		want       bool
	}{
		{"a cluster added after the running ones", two, three, true},
		{"the last cluster left out", three, two, true},
		{"the running clusters reordered: their addresses would move", two, swapped, false},
		{"a running cluster's network changed", two, renetworked, false},
	} {
		if got := resized(tc.prev, tc.next); got != tc.want {
			t.Errorf("%s: resized = %v, want %v", tc.name, got, tc.want)
		}
	}
}
