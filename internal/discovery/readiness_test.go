package discovery

import (
	"strings"
	"testing"

	"github.com/isthmus-mesh/isthmus/internal/discovery/remotesecret"
)

// The control plane is ready once its cluster synced, the start-up remote
// secrets were read and none of their clusters is still syncing (timed
// out or broken ones do not hold it back); then it stays ready while a
// remote added later syncs, as istiod: every replica leaving its Service
// for that would stop new proxies from connecting anywhere.
func TestReadinessWaitsThenHolds(t *testing.T) {
	local, listed := false, false
	remotes := []remotesecret.Status{{ID: "c2", State: "syncing"}, {ID: "c3", State: "timeout"}, {ID: "c4", State: "error"}}
	r := &readiness{localSynced: func() bool { return local }, listed: func() bool { return listed },
		remotes: func() []remotesecret.Status { return remotes }}
	for _, step := range []struct {
		do   func()
		want string
	}{
		{func() {}, "local cluster not synced"},
		{func() { local = true }, "remote secrets not read yet"},
		{func() { listed = true }, "remote cluster c2 syncing"},
		{func() { remotes[0].State = "synced" }, ""},
		{func() { remotes = append(remotes, remotesecret.Status{ID: "c5", State: "syncing"}) }, ""},
	} {
		step.do()
		err := r.check()
		if step.want == "" && err != nil || step.want != "" && (err == nil || !strings.Contains(err.Error(), step.want)) {
			t.Fatalf("got %v, want %q", err, step.want)
		}
	}
}
