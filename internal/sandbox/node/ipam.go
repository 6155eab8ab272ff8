package node

import (
	"fmt"
	"net/netip"
	"sync"

	"k8s.io/apimachinery/pkg/types"
)

// ipam hands out pod addresses from the node's pod CIDR. Addresses live as
// long as the pod object; the agent starts empty and so do its pods.
type ipam struct {
	cidr netip.Prefix

	mu   sync.Mutex // guards used
	used map[netip.Addr]types.UID
}

func newIPAM(cidr netip.Prefix) *ipam {
	return &ipam{cidr: cidr.Masked(), used: map[netip.Addr]types.UID{}}
}

// allocate returns the pod's address, the same one on repeated calls.
func (p *ipam) allocate(uid types.UID) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, u := range p.used {
		if u == uid {
			return a, nil
		}
	}
	// .0 is the network, .1 is left out by convention; the last is broadcast.
	for a := p.cidr.Addr().Next().Next(); p.cidr.Contains(a); a = a.Next() {
		if !p.cidr.Contains(a.Next()) {
			break
		}
		if _, taken := p.used[a]; !taken {
			p.used[a] = uid
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("pod CIDR %s is exhausted", p.cidr)
}

func (p *ipam) release(uid types.UID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, u := range p.used {
		if u == uid {
			delete(p.used, a)
		}
	}
}
