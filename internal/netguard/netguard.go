// Package netguard decides which addresses the gateway may connect to on
// behalf of a runtime service (one added through the management API), so
// that the management API cannot turn the gateway against its own host or
// network: no loopback, private, link-local, metadata, documentation or
// other special-purpose address, and none of the gateway host's own
// addresses.
//
// It is used twice: when a service is validated (CheckHost, CheckResolved)
// and when its transport dials (Control, for net.Dialer.Control), which is
// what defeats DNS rebinding after validation.
//
// The address classification is code.dny.dev/ssrf: its deny lists are
// generated from IANA's IPv4 and IPv6 special-purpose registries, so a
// registry change is a dependency update rather than a hand edit, and for
// IPv6 it allows only the global unicast range (2000::/3) minus the
// special-purpose blocks inside it, which closes whole families (IPv4-
// compatible ::a.b.c.d, site-local, unique-local, NAT64 local-use) that a
// hand-kept list of prefixes misses one by one. This package adds what a
// dial-time classification cannot know: IPv4-mapped addresses are judged
// as the IPv4 address they carry, the well-known NAT64 prefix by the IPv4
// address it embeds (IPv6-only hosts behind DNS64 reach every IPv4 API
// through it), the host's own interface addresses, and host names that are
// IPv4 addresses in a non-canonical spelling.
package netguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"code.dny.dev/ssrf"
)

// ErrRefused is wrapped by every refusal, so callers can tell a refused
// address from a failed lookup or a malformed one.
var ErrRefused = errors.New("address refused")

// ownTTL is how long the host's interface addresses are trusted before
// they are read again: an address added to an interface is refused within
// this time. Reading them is a netlink round trip, cheap at this rate.
const ownTTL = 5 * time.Second

// lookupTimeout bounds name resolution during validation.
const lookupTimeout = 3 * time.Second

// Guard refuses addresses a runtime service must not reach. It is safe for
// concurrent use.
type Guard struct {
	ranges *ssrf.Guardian
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	own    ownAddrs
}

// New returns a guard and reads the host's interface addresses now.
func New() *Guard {
	return newGuard(interfaceAddrs, net.DefaultResolver.LookupNetIP)
}

func newGuard(list func() ([]netip.Addr, error), resolve func(ctx context.Context, network, host string) ([]netip.Addr, error)) *Guard {
	g := &Guard{
		// Ports and networks are the service's business; only the
		// address is judged here.
		ranges: ssrf.New(ssrf.WithAnyPort(), ssrf.WithAnyNetwork()),
		lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return resolve(ctx, "ip", host)
		},
		own: ownAddrs{list: list},
	}
	g.own.refresh(time.Now())
	return g
}

// CheckAddr refuses a special-purpose address or one of the host's own.
func (g *Guard) CheckAddr(addr netip.Addr) error {
	addr = addr.WithZone("").Unmap()
	if !addr.IsValid() {
		return fmt.Errorf("%w: not an IP address", ErrRefused)
	}
	if special(g.ranges, addr) {
		return fmt.Errorf("%w: %s is a loopback, private, link-local or other special-purpose address", ErrRefused, addr)
	}
	if g.own.contains(addr) {
		return fmt.Errorf("%w: %s is an address of the gateway's own host", ErrRefused, addr)
	}
	return nil
}

// nat64 is the well-known NAT64 prefix (RFC 6052): 64:ff9b::a.b.c.d reaches
// the IPv4 address a.b.c.d through a NAT64 gateway.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// special reports addresses in a special-purpose range. addr is unmapped.
func special(ranges *ssrf.Guardian, addr netip.Addr) bool {
	if nat64.Contains(addr) {
		b := addr.As16()
		addr = netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	}
	return ranges.SafeAddr(addr) != nil
}

// CheckHost refuses, without resolving it, a host that is a refused
// address, a loopback name, or an IPv4 address in any spelling other than
// dotted decimal (2130706433, 0x7f000001, 127.1, 0177.0.0.1): the C
// resolver and browsers read those as addresses, Go's resolver does not,
// so what they reach depends on who resolves them. host is a URL's
// Hostname(): brackets are tolerated, a trailing dot is ignored.
func (g *Guard) CheckHost(host string) error {
	h := strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return fmt.Errorf("%w: host %q is loopback", ErrRefused, host)
	}
	if addr, err := netip.ParseAddr(h); err == nil {
		return g.CheckAddr(addr)
	}
	if endsInNumber(h) {
		return fmt.Errorf("%w: host %q is not a DNS name, and not an IP address written canonically (a.b.c.d for IPv4)", ErrRefused, host)
	}
	return nil
}

// endsInNumber reports a host whose last label is a number (decimal, or
// hex with 0x): the WHATWG URL parser treats such a host as an IPv4
// address, and no top-level domain is numeric.
func endsInNumber(host string) bool {
	last := host[strings.LastIndexByte(host, '.')+1:]
	if last == "" {
		return false
	}
	if hex, ok := strings.CutPrefix(last, "0x"); ok {
		return strings.Trim(hex, "0123456789abcdef") == ""
	}
	return strings.Trim(last, "0123456789") == ""
}

// CheckResolved is CheckHost, then resolves a name and refuses it if any of
// its addresses is refused. A name that does not resolve now is not
// refused: the dial-time Control still judges whatever it resolves to
// later.
func (g *Guard) CheckResolved(ctx context.Context, host string) error {
	if err := g.CheckHost(host); err != nil {
		return err
	}
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	addrs, err := g.lookup(ctx, host)
	if err != nil {
		return nil
	}
	for _, addr := range addrs {
		if err := g.CheckAddr(addr); err != nil {
			return fmt.Errorf("host %q resolves to a refused address: %w", host, err)
		}
	}
	return nil
}

// Control is a net.Dialer Control function: it runs after name resolution,
// before the connection is made, with the address about to be dialed.
func (g *Guard) Control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot judge dial address %q", ErrRefused, address)
	}
	if err := g.CheckAddr(ap.Addr()); err != nil {
		return fmt.Errorf("refusing to dial: %w", err)
	}
	return nil
}

// ownAddrs caches the host's interface addresses.
type ownAddrs struct {
	list func() ([]netip.Addr, error)

	mu   sync.Mutex
	read time.Time
	set  map[netip.Addr]struct{}
}

func (o *ownAddrs) contains(addr netip.Addr) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if now := time.Now(); now.Sub(o.read) >= ownTTL {
		o.refreshLocked(now)
	}
	_, ok := o.set[addr]
	return ok
}

func (o *ownAddrs) refresh(now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.refreshLocked(now)
}

// refreshLocked reads the addresses again; on an error it keeps the last
// set it had (an interface list that cannot be read now was readable
// before), and tries again after ownTTL.
func (o *ownAddrs) refreshLocked(now time.Time) {
	o.read = now
	addrs, err := o.list()
	if err != nil {
		return
	}
	set := make(map[netip.Addr]struct{}, len(addrs))
	for _, a := range addrs {
		set[a.WithZone("").Unmap()] = struct{}{}
	}
	o.set = set
}

// interfaceAddrs lists the addresses of every interface of the host.
func interfaceAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr())
		} else if ip, err := netip.ParseAddr(a.String()); err == nil {
			out = append(out, ip)
		}
	}
	return out, nil
}
