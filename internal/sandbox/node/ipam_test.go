package node

import (
	"net/netip"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

func TestIPAM(t *testing.T) {
	p := newIPAM(netip.MustParsePrefix("100.64.0.0/29"))
	a, _ := p.allocate("a")
	if a.String() != "100.64.0.2" {
		t.Fatalf("first address %s", a)
	}
	again, _ := p.allocate("a")
	if again != a {
		t.Fatal("a pod got a second address")
	}
	for _, uid := range []string{"b", "c", "d", "e"} {
		if _, err := p.allocate(types.UID(uid)); err != nil {
			t.Fatalf("allocate %s: %v", uid, err)
		}
	}
	if _, err := p.allocate("f"); err == nil {
		t.Fatal("allocated the broadcast address or beyond")
	}
	p.release("c")
	if got, err := p.allocate("f"); err != nil || got.String() != "100.64.0.4" {
		t.Fatalf("released address not reused: %v %v", got, err)
	}
}
