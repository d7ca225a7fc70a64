package main

import (
	"errors"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serveOnce answers the first connection on a fresh socket with reply, then closes it.
func serveOnce(t *testing.T, reply func(net.Conn)) string {
	t.Helper()
	path := filepath.Join(shortDir(t), "s.sock")
	listener, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close() })
	go func() {
		conn, err := listener.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		buf := make([]byte, 65536)
		_, _ = conn.Read(buf)
		reply(conn)
	}()
	return path
}

func TestResponses(t *testing.T) {
	cases := []struct {
		name   string
		raw    string
		status int // 0: agentUnavailable
		body   string
	}{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 200, "{}"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2;x=y\r\n1}\r\n0\r\n\r\n", 200, `{"a":1}`},
		{"read to close", "HTTP/1.0 404 Not Found\r\n\r\nnope", 404, "nope"},
		{"truncated body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 0, ""},
		{"truncated head", "HTTP/1.1 200 OK\r\nContent-Le", 0, ""},
		{"not http", "SSH-2.0-OpenSSH\r\n\r\n", 0, ""},
		{"bad length", "HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", 0, ""},
		{"minus length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}", 0, ""},
		{"huge length", "HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n{}", 0, ""},
		{"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0, ""},
		{"endless headers", "HTTP/1.1 200 OK\r\n" + strings.Repeat("X: y\r\n", 200) + "\r\n", 0, ""},
		{"nothing", "", 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := serveOnce(t, func(conn net.Conn) { _, _ = conn.Write([]byte(c.raw)) })
			status, body, err := httpRequest(path, "POST", "/v1/cni/add", []byte("{}"), 5*time.Second)
			var unavailable *agentUnavailable
			if c.status == 0 {
				if !errors.As(err, &unavailable) || !unavailable.sent {
					t.Fatalf("got %d %q %v, want agentUnavailable after sending", status, body, err)
				}
				return
			}
			if err != nil || status != c.status || string(body) != c.body {
				t.Fatalf("got %d %q %v", status, body, err)
			}
		})
	}
}

func TestSilentAgentTimesOut(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	path := serveOnce(t, func(net.Conn) { <-release })
	_, _, err := httpRequest(path, "POST", "/v1/cni/add", []byte("{}"), 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("got %v", err)
	}
}

func TestConnectErrno(t *testing.T) {
	dir := shortDir(t)
	stale := filepath.Join(dir, "stale.sock")
	listener, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	listener.(*net.UnixListener).SetUnlinkOnClose(false)
	listener.Close()
	cases := []struct {
		path string
		want syscall.Errno
	}{
		{filepath.Join(dir, "absent.sock"), syscall.ENOENT},
		{stale, syscall.ECONNREFUSED},
	}
	for _, c := range cases {
		_, _, err := httpRequest(c.path, "GET", "/", nil, time.Second)
		if got := connectErrno(err); got != c.want {
			t.Errorf("%s: errno %v (%v), want %v", c.path, got, err, c.want)
		}
	}
}
