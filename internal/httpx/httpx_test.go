package httpx

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestIsTLSError: a real request that fails certificate verification, and
// one to a listener that does not speak TLS, are TLS errors; a refused
// connection is not.
func TestIsTLSError(t *testing.T) {
	tlsUp := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer tlsUp.Close()
	notTLS, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer notTLS.Close()
	go func() {
		for {
			c, err := notTLS.Accept()
			if err != nil {
				return
			}
			// Not "HTTP/", which net/http reports in an error of its own.
			c.Write([]byte("SSH-2.0-x\r\n"))
			c.Close()
		}
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + ln.Addr().String()
	ln.Close()

	client := &http.Client{Transport: &http.Transport{}}
	for _, c := range []struct {
		url  string
		want bool
	}{
		{tlsUp.URL, true}, // self-signed: unknown authority
		{"https://" + notTLS.Addr().String(), true},
		{closed, false},
	} {
		_, err := client.Get(c.url)
		if err == nil {
			t.Fatalf("%s: no error", c.url)
		}
		if got := IsTLSError(err); got != c.want {
			t.Errorf("IsTLSError(%v) = %v, want %v", err, got, c.want)
		}
	}
	if IsTLSError(errors.New("tls: something")) {
		t.Error("an error is classified by its type, not its text")
	}
}
