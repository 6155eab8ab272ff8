// Package origdst reads where a redirected connection was going: the
// address iptables' REDIRECT rewrote, from the socket (SO_ORIGINAL_DST).
package origdst

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"unsafe"
)

// soOriginalDst is SO_ORIGINAL_DST (and IP6T_SO_ORIGINAL_DST), linux/netfilter_ipv4.h.
const soOriginalDst = 80

// Get returns the original destination of an accepted TCP connection; for
// a connection that was not redirected, that is its local address.
func Get(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn) // *net.TCPConn, or rawtcp's wrapping of one
	la, isTCP := c.LocalAddr().(*net.TCPAddr)
	if !ok || !isTCP {
		return netip.AddrPort{}, errors.New("not a TCP connection")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	local := la.AddrPort()
	var out netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		if local.Addr().Unmap().Is4() {
			var sa syscall.RawSockaddrInet4
			l := uint32(unsafe.Sizeof(sa))
			_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.SOL_IP, soOriginalDst, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0)
			if e != 0 {
				serr = e
				return
			}
			port := uint16(sa.Port>>8) | uint16(sa.Port<<8)
			out = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
			return
		}
		var sa syscall.RawSockaddrInet6
		l := uint32(unsafe.Sizeof(sa))
		_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.SOL_IPV6, soOriginalDst, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
			return
		}
		port := uint16(sa.Port>>8) | uint16(sa.Port<<8)
		out = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		// No conntrack entry (not redirected): the local address is the destination.
		return local, nil
	}
	return netip.AddrPortFrom(out.Addr().Unmap(), out.Port()), nil
}
