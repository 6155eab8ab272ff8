package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// NFTTable is the nftables table that holds the capture when the pod has no
// iptables binaries (the isthmus image has none: it is the static binary
// alone). Its chains carry Istio's names, so `nft list table ip isthmus`
// reads like `iptables -t nat -S`.
const NFTTable = "isthmus"

// applyNFT writes the same rules as Rules() through netlink, replacing the
// table in one transaction (running it again gives the same rules).
func (c Config) applyNFT() error {
	rules := c.rules()
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	table := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: NFTTable}
	if tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv4); err == nil {
		for _, t := range tables {
			if t.Name == NFTTable {
				conn.DelTable(t)
			}
		}
	} else {
		return nftErr(err)
	}
	conn.AddTable(table)
	byName := map[string]*nftables.Chain{}
	for _, name := range c.chains() {
		byName[name] = conn.AddChain(&nftables.Chain{Name: name, Table: table})
	}
	// Base chains of the built-in chains' names, hooked where they are,
	// carry the same hooks as iptables' jumps.
	for name, hook := range map[string]*nftables.ChainHook{"PREROUTING": nftables.ChainHookPrerouting, "OUTPUT": nftables.ChainHookOutput} {
		byName[name] = conn.AddChain(&nftables.Chain{
			Name: name, Table: table, Type: nftables.ChainTypeNAT,
			Hooknum: hook, Priority: nftables.ChainPriorityNATDest,
		})
	}
	for _, r := range append(c.hooks(), rules...) {
		exprs, err := r.nft()
		if err != nil {
			return fmt.Errorf("rule %q: %w", r.String(), err)
		}
		conn.AddRule(&nftables.Rule{Table: table, Chain: byName[r.chain], Exprs: exprs})
	}
	if len(c.DNSServers) > 0 {
		// The raw table's chains, as iptables' raw table holds them: one
		// nftables table cannot have two chains of a name, so "raw_".
		raw := map[string]*nftables.Chain{}
		for _, name := range []string{chainInbound, chainOutputDNS} {
			raw[name] = conn.AddChain(&nftables.Chain{Name: "raw_" + name, Table: table})
		}
		for name, hook := range map[string]*nftables.ChainHook{"PREROUTING": nftables.ChainHookPrerouting, "OUTPUT": nftables.ChainHookOutput} {
			raw[name] = conn.AddChain(&nftables.Chain{Name: "raw_" + name, Table: table, Type: nftables.ChainTypeFilter,
				Hooknum: hook, Priority: nftables.ChainPriorityRaw})
		}
		for _, r := range append(c.rawHooks(), c.rawRules()...) {
			if r.target == chainInbound || r.target == chainOutputDNS {
				r.target = "raw_" + r.target
			}
			exprs, err := r.nft()
			if err != nil {
				return fmt.Errorf("rule %q: %w", r.String(), err)
			}
			conn.AddRule(&nftables.Rule{Table: table, Chain: raw[r.chain], Exprs: exprs})
		}
	}
	if err := conn.Flush(); err != nil {
		return nftErr(err)
	}
	return nil
}

func nftErr(err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("nftables: %w: the init container needs the NET_ADMIN capability (or root)", err)
	}
	return fmt.Errorf("nftables: %w", err)
}

// nft is the rule as nftables expressions, in the order iptables matches.
func (r rule) nft() ([]expr.Any, error) {
	var out []expr.Any
	cmp := func(neg bool, data []byte) *expr.Cmp {
		op := expr.CmpOpEq
		if neg {
			op = expr.CmpOpNeq
		}
		return &expr.Cmp{Op: op, Register: 1, Data: data}
	}
	prefix := func(s string, offset uint32, neg bool) error {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			if a, aerr := netip.ParseAddr(s); aerr == nil {
				p, err = a.Prefix(a.BitLen())
			}
		}
		if err != nil || !p.Addr().Is4() {
			return fmt.Errorf("%q is not an IPv4 CIDR", s)
		}
		p = p.Masked()
		mask := make([]byte, 4)
		binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-p.Bits()))
		if p.Bits() == 0 {
			mask = []byte{0, 0, 0, 0}
		}
		addr := p.Addr().As4()
		out = append(out,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
			cmp(neg, addr[:]))
		return nil
	}
	if r.src != "" {
		if err := prefix(r.src, 12, false); err != nil {
			return nil, err
		}
	}
	if r.dst != "" {
		if err := prefix(r.dst, 16, r.notDst); err != nil {
			return nil, err
		}
	}
	if r.outLo {
		name := make([]byte, unix.IFNAMSIZ)
		copy(name, "lo")
		out = append(out, &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, cmp(false, name))
	}
	switch {
	case r.udp:
		out = append(out, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, cmp(false, []byte{unix.IPPROTO_UDP}))
	case r.tcp || r.dport != "":
		out = append(out, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, cmp(false, []byte{unix.IPPROTO_TCP}))
	}
	for _, p := range []struct {
		port   string
		offset uint32
		neg    bool
	}{{r.sport, 0, false}, {r.dport, 2, r.notDport}} {
		if p.port == "" {
			continue
		}
		port, err := strconv.ParseUint(p.port, 10, 16)
		if err != nil || port == 0 {
			return nil, fmt.Errorf("port %q is not a port number", p.port)
		}
		out = append(out,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: p.offset, Len: 2},
			cmp(p.neg, binary.BigEndian.AppendUint16(nil, uint16(port))))
	}
	if r.owner != "" {
		key := expr.MetaKeySKUID
		if r.owner == "gid" {
			key = expr.MetaKeySKGID
		}
		out = append(out, &expr.Meta{Key: key, Register: 1}, cmp(r.notOwner, binary.NativeEndian.AppendUint32(nil, uint32(r.ownerID))))
	}
	switch r.target {
	case "RETURN":
		out = append(out, &expr.Verdict{Kind: expr.VerdictReturn})
	case "REDIRECT":
		out = append(out,
			&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, uint16(r.toPort))},
			&expr.Redir{RegisterProtoMin: 1})
	case "CT":
		out = append(out,
			&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint16(nil, uint16(r.zone))},
			&expr.Ct{Key: expr.CtKeyZONE, Register: 1, SourceRegister: true})
	default:
		out = append(out, &expr.Verdict{Kind: expr.VerdictJump, Chain: r.target})
	}
	return out, nil
}
