package network

import "testing"

// A host's name becomes paths under /run/netns and /etc/netns, as root:
// only short DNS labels pass.
func TestHostName(t *testing.T) {
	for _, ok := range []string{"vm-1", "ext", "a"} {
		if err := hostName(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "../../..", "a/b", "VM", "x.y", "-a", "a-very-long-host-name-beyond-thirty-two-chars"} {
		if err := hostName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
