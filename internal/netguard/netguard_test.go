package netguard

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// ownPublic stands for a public address assigned to one of the gateway
// host's interfaces (203.0.114.0/24 is ordinary unicast space).
var ownPublic = netip.MustParseAddr("203.0.114.7")

func testGuard(resolve map[string][]string) *Guard {
	list := func() ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1"), ownPublic, netip.MustParseAddr("2a01:4f8::7")}, nil
	}
	lookup := func(_ context.Context, _, host string) ([]netip.Addr, error) {
		var out []netip.Addr
		for _, s := range resolve[host] {
			out = append(out, netip.MustParseAddr(s))
		}
		if out == nil {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		return out, nil
	}
	return newGuard(list, lookup)
}

func TestCheckAddr(t *testing.T) {
	t.Parallel()
	g := testGuard(nil)
	refused := []string{
		// loopback, private, link-local, unspecified, CGNAT, metadata
		"127.0.0.1", "127.255.0.9", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
		"100.64.0.1", "100.100.100.200", "0.0.0.0", "0.1.2.3", "192.0.0.192", "198.18.0.1",
		"240.0.0.1", "255.255.255.255", "224.0.0.1",
		// documentation (TEST-NET-1, -2, -3)
		"192.0.2.1", "192.0.2.2", "198.51.100.7", "203.0.113.250",
		// IPv6 special purpose
		"::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "fd00::2", "fd00:ec2::254", "fec0::1", "ff02::1",
		"2001:db8::1", "3fff::1", "100::1", "64:ff9b:1::a00:1",
		// IPv4 inside IPv6: mapped, compatible, translated, NAT64, 6to4, Teredo
		"::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:192.0.2.2", "::127.0.0.1", "::10.0.0.1", "::8.8.8.8",
		"::ffff:0:7f00:1", "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b::c000:202",
		"2002:7f00:1::", "2002:c0a8:101::1", "2002:808:808::1", "2001::1",
		// the host's own public addresses
		"203.0.114.7", "::ffff:203.0.114.7", "2a01:4f8::7",
	}
	allowed := []string{
		"93.184.215.14", "1.1.1.1", "8.8.8.8", "140.82.112.3", "162.159.135.232", "203.0.114.8",
		"::ffff:8.8.8.8", "2606:4700::1111", "2a01:4f8::8", "64:ff9b::808:808",
	}
	for _, s := range refused {
		if err := g.CheckAddr(netip.MustParseAddr(s)); !errors.Is(err, ErrRefused) {
			t.Errorf("%s allowed (%v)", s, err)
		}
	}
	for _, s := range allowed {
		if err := g.CheckAddr(netip.MustParseAddr(s)); err != nil {
			t.Errorf("%s refused: %v", s, err)
		}
	}
	if err := g.CheckAddr(netip.Addr{}); !errors.Is(err, ErrRefused) {
		t.Error("the zero address was allowed")
	}
	if err := g.CheckAddr(ownPublic); err == nil || !strings.Contains(err.Error(), "own host") {
		t.Errorf("own address: %v", err)
	}
}

// TestCheckHost: every spelling of a refused address in a URL's host, and
// the names that must pass.
func TestCheckHost(t *testing.T) {
	t.Parallel()
	g := testGuard(nil)
	refused := []string{
		"localhost", "LOCALHOST.", "a.localhost", "127.0.0.1", "127.0.0.1.", "[::1]", "::1", "10.2.3.4",
		"fe80::1%eth0", "[::127.0.0.1]", "::ffff:7f00:1", "0:0:0:0:0:ffff:127.0.0.1", "192.0.2.2",
		"198.51.100.1", "203.0.113.9", "203.0.114.7",
		// non-canonical IPv4 spellings: what inet_aton and browsers accept
		"2130706433", "0x7f000001", "0X7F000001", "127.1", "127.0.1", "0177.0.0.1", "0x7f.0.0.1",
		"017700000001", "127.000.000.001", "00127.0.0.1", "1.2.3.4.5", "0", "0x", "8.8.8.010",
		"134744072", "example.0x10", "example.123", "example.123.",
	}
	allowed := []string{
		"api.github.com", "discord.com", "DISCORD.COM.", "93.184.215.14", "8.8.8.8", "localhost.example.com",
		"2606:4700::1111", "[2606:4700::1111]", "1e100.net", "123.example", "x.0xg", "xn--bcher-kva.example",
	}
	for _, h := range refused {
		if err := g.CheckHost(h); !errors.Is(err, ErrRefused) {
			t.Errorf("%q allowed (%v)", h, err)
		}
	}
	for _, h := range allowed {
		if err := g.CheckHost(h); err != nil {
			t.Errorf("%q refused: %v", h, err)
		}
	}
}

func TestCheckResolved(t *testing.T) {
	t.Parallel()
	g := testGuard(map[string][]string{
		"public.example":   {"93.184.215.14", "2606:4700::1111"},
		"rebind.example":   {"93.184.215.14", "127.0.0.1"},
		"metadata.example": {"169.254.169.254"},
		"self.example":     {"203.0.114.7"},
		"doc.example":      {"192.0.2.2"},
		"compat.example":   {"::7f00:1"},
	})
	ctx := context.Background()
	for _, h := range []string{"public.example", "unresolvable.example", "8.8.8.8"} {
		if err := g.CheckResolved(ctx, h); err != nil {
			t.Errorf("%s refused: %v", h, err)
		}
	}
	for _, h := range []string{"rebind.example", "metadata.example", "self.example", "doc.example", "compat.example", "localhost", "2130706433"} {
		if err := g.CheckResolved(ctx, h); !errors.Is(err, ErrRefused) {
			t.Errorf("%s allowed (%v)", h, err)
		}
	}
}

// TestControlNeverConnects: a dialer using Control does not connect to a
// refused address, whichever way it was reached, and does connect to an
// allowed one.
func TestControlNeverConnects(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	g := New()
	d := &net.Dialer{Timeout: 2 * time.Second, Control: g.Control}
	for _, host := range []string{"127.0.0.1", "localhost", "[::ffff:127.0.0.1]"} {
		c, err := d.Dial("tcp", net.JoinHostPort(strings.Trim(host, "[]"), port))
		if err == nil {
			c.Close()
			t.Errorf("%s: connected", host)
		} else if !errors.Is(err, ErrRefused) {
			t.Errorf("%s: %v, want a refusal", host, err)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("the listener accepted %d connections", n)
	}
	if err := g.Control("tcp4", "93.184.215.14:443", nil); err != nil {
		t.Errorf("public address refused: %v", err)
	}
	if err := g.Control("tcp6", "[::ffff:127.0.0.1]:80", nil); !errors.Is(err, ErrRefused) {
		t.Errorf("mapped loopback: %v", err)
	}
	if err := g.Control("tcp", "not-an-address", nil); !errors.Is(err, ErrRefused) {
		t.Errorf("unparsable: %v", err)
	}
	// Allowed by the guard, the dial goes through: Control is not what
	// stops every connection.
	plain := &net.Dialer{Timeout: 2 * time.Second}
	c, err := plain.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// TestOwnAddressesRefreshed: an address added to an interface is refused
// once the cache expires; a failed read keeps the last set.
func TestOwnAddressesRefreshed(t *testing.T) {
	t.Parallel()
	var (
		addrs []netip.Addr
		fail  bool
	)
	o := ownAddrs{list: func() ([]netip.Addr, error) {
		if fail {
			return nil, errors.New("netlink: down")
		}
		return addrs, nil
	}}
	start := time.Now()
	o.refresh(start)
	added := netip.MustParseAddr("203.0.114.9")
	if o.contains(added) {
		t.Fatal("not yet added")
	}
	addrs = []netip.Addr{added}
	o.mu.Lock()
	o.read = start.Add(-ownTTL) // expire the cache
	o.mu.Unlock()
	if !o.contains(added) {
		t.Fatal("added address not seen after the cache expired")
	}
	fail = true
	o.mu.Lock()
	o.read = start.Add(-ownTTL)
	o.mu.Unlock()
	if !o.contains(added) {
		t.Fatal("a failed read dropped the known addresses")
	}
}

// TestHostInterfaceAddressesRefused: every address of this machine's own
// interfaces is refused, whatever its range.
func TestHostInterfaceAddressesRefused(t *testing.T) {
	t.Parallel()
	addrs, err := interfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) == 0 {
		t.Fatal("no interface address found")
	}
	g := New()
	for _, a := range addrs {
		if err := g.CheckAddr(a); !errors.Is(err, ErrRefused) {
			t.Errorf("own address %s allowed", a)
		}
	}
}
