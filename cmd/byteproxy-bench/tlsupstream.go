package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// tlsUpstream is the HTTPS flavour of the benchmark's upstream. It offers
// HTTP/2 and/or HTTP/1.1 by ALPN (-upstream-proto) with a self-signed
// certificate made at start. HTTP/1.1 connections get the same minimal
// server as the plain-http upstream (serveUpstreamConn) so that the
// upstream costs as little CPU as possible; HTTP/2 connections are handed
// to net/http's own HTTP/2 server.
type tlsUpstream struct {
	config  *tls.Config
	proto   string // protoH1, protoH2 or protoBoth
	h2      *connListener
	observe func(proto string, resumed bool)
}

// newTLSUpstream prepares the certificate and the HTTP/2 server. addr is
// only what the HTTP/2 server's listener reports as its address.
func newTLSUpstream(addr net.Addr, proto string, observe func(proto string, resumed bool)) (*tlsUpstream, error) {
	alpn, err := alpnFor(proto)
	if err != nil {
		return nil, err
	}
	cert, err := selfSignedCert()
	if err != nil {
		return nil, err
	}
	u := &tlsUpstream{
		config: &tls.Config{
			Certificates: []tls.Certificate{cert},
			NextProtos:   alpn,
			MinVersion:   tls.VersionTLS12,
		},
		proto:   proto,
		h2:      newConnListener(addr),
		observe: observe,
	}
	// With no TLSConfig, Serve sets up HTTP/2 for the *tls.Conn values
	// whose negotiated protocol is "h2" (net/http's shouldConfigureHTTP2ForServe).
	srv := &http.Server{
		Handler:  http.HandlerFunc(answerUpstream),
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() { _ = srv.Serve(u.h2) }()
	return u, nil
}

// alpnFor is the ALPN list the HTTPS upstream offers for -upstream-proto.
func alpnFor(proto string) ([]string, error) {
	switch proto {
	case protoH1:
		return []string{"http/1.1"}, nil
	case protoH2:
		return []string{"h2"}, nil
	case protoBoth, "":
		return []string{"h2", "http/1.1"}, nil
	}
	return nil, fmt.Errorf("unknown upstream protocol %q: want h1, h2 or both", proto)
}

// alpnLabel describes what the HTTPS upstream offers, for the report.
func alpnLabel(proto string) string {
	alpn, err := alpnFor(proto)
	if err != nil {
		return proto
	}
	return strings.Join(alpn, "+")
}

// serve completes the TLS handshake on c and serves it with the protocol
// negotiated.
func (u *tlsUpstream) serve(c net.Conn) {
	tc := tls.Server(c, u.config)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		_ = tc.Close()
		return
	}
	st := tc.ConnectionState()
	switch {
	case st.NegotiatedProtocol == "h2":
		u.observe(protoH2, st.DidResume)
		if !u.h2.push(tc) {
			_ = tc.Close()
		}
	case u.proto == protoH2:
		// A client offering only http/1.1 may connect to an h2-only
		// server as if ALPN did not exist (crypto/tls's fallback). The
		// benchmark asked for HTTP/2 only: refuse, so that a target that
		// cannot speak it fails visibly instead of being measured on
		// HTTP/1.1.
		_ = tc.Close()
	default:
		u.observe(protoH1, st.DidResume)
		serveUpstreamConn(tc)
	}
}

// upstreamBodyBytes is upstreamBody, converted once.
var (
	upstreamBodyBytes = []byte(upstreamBody)
	upstreamBodyLen   = strconv.Itoa(len(upstreamBody))
)

// answerUpstream is the HTTP/2 upstream's handler: the same answer as the
// HTTP/1.1 one, after reading the request body and upstreamDelay.
func answerUpstream(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	if upstreamDelay > 0 {
		time.Sleep(upstreamDelay)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", upstreamBodyLen)
	_, _ = w.Write(upstreamBodyBytes)
}

// selfSignedCert makes an ECDSA P-256 certificate for 127.0.0.1, ::1 and
// localhost, valid for a day. Every client of the upstream skips
// verification; the certificate is only what TLS needs to run.
func selfSignedCert() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "byteproxy-bench upstream"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // self-signed: its own root, so a test can verify it
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// connListener is a net.Listener fed with connections accepted elsewhere
// (here: TLS connections that negotiated h2), so that an http.Server can
// serve them.
type connListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newConnListener(addr net.Addr) *connListener {
	return &connListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to Accept; false once the listener is closed.
func (l *connListener) push(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }

var _ net.Listener = (*connListener)(nil)
