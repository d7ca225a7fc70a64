package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	connectTimeout = 2 * time.Second
	maxHeaderLines = 100
	maxResponse    = 4 << 20 // the agent's largest answer (a GC summary) is far below
)

// agentUnavailable is anything short of a complete HTTP answer. Sent says whether the request
// may have reached the agent: a failed connect sent nothing, so it can be retried.
type agentUnavailable struct {
	err  error
	sent bool
}

func (e *agentUnavailable) Error() string { return e.err.Error() }
func (e *agentUnavailable) Unwrap() error { return e.err }

// httpRequest does one HTTP/1.1 exchange over a fresh connection to the agent's Unix socket
// and returns the status and body; every failure is an *agentUnavailable.
func httpRequest(socket, method, target string, body []byte, timeout time.Duration) (int, []byte, error) {
	deadline := time.Now().Add(timeout)
	dial := connectTimeout
	if timeout < dial {
		dial = timeout
	}
	conn, err := net.DialTimeout("unix", socket, dial)
	if err != nil {
		return 0, nil, &agentUnavailable{err: fmt.Errorf("%s %s via %s: %w", method, target, socket, err)}
	}
	defer conn.Close()
	fail := func(err error) (int, []byte, error) {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("timed out after %s waiting for the agent", timeout)
		}
		return 0, nil, &agentUnavailable{err: fmt.Errorf("%s %s via %s: %w", method, target, socket, err), sent: true}
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return fail(err)
	}
	head := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: vpcni\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\nConnection: close\r\n\r\n", method, target, len(body))
	if _, err := conn.Write(append([]byte(head), body...)); err != nil {
		return fail(err)
	}
	status, answer, err := readResponse(bufio.NewReaderSize(conn, 64<<10))
	if err != nil {
		return fail(err)
	}
	return status, answer, nil
}

// readLine returns one CRLF- (or LF-) terminated line without its terminator.
func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadSlice('\n')
	if err == io.EOF {
		return "", io.ErrUnexpectedEOF
	}
	if err != nil {
		return "", err
	}
	return string(bytes.TrimRight(line, "\r\n")), nil
}

func readResponse(r *bufio.Reader) (int, []byte, error) {
	statusLine, err := readLine(r)
	if err != nil {
		return 0, nil, fmt.Errorf("reading the status line: %w", err)
	}
	parts := strings.SplitN(statusLine, " ", 3)
	status, convErr := 0, errors.New("no status code")
	if len(parts) >= 2 {
		status, convErr = strconv.Atoi(parts[1])
	}
	if !strings.HasPrefix(parts[0], "HTTP/1.") || convErr != nil || status < 100 || status > 999 {
		if len(statusLine) > 80 {
			statusLine = statusLine[:80]
		}
		return 0, nil, fmt.Errorf("malformed status line %q", statusLine)
	}
	length, chunked := int64(-1), false
	for n := 0; ; n++ {
		if n == maxHeaderLines {
			return 0, nil, errors.New("too many header lines")
		}
		line, err := readLine(r)
		if err != nil {
			return 0, nil, fmt.Errorf("reading headers: %w", err)
		}
		if line == "" {
			break
		}
		name, value, _ := strings.Cut(line, ":")
		name, value = strings.ToLower(strings.TrimSpace(name)), strings.TrimSpace(value)
		switch name {
		case "content-length":
			if length, err = strconv.ParseInt(value, 10, 64); err != nil || length < 0 {
				return 0, nil, fmt.Errorf("bad Content-Length %q", value)
			}
		case "transfer-encoding":
			chunked = strings.Contains(strings.ToLower(value), "chunked")
		}
	}
	switch {
	case chunked:
		body, err := readChunked(r)
		return status, body, err
	case length > maxResponse:
		return 0, nil, fmt.Errorf("response of %d bytes is over %d", length, maxResponse)
	case length >= 0:
		body := make([]byte, length)
		if _, err := io.ReadFull(r, body); err != nil {
			return 0, nil, fmt.Errorf("reading the body: %w", err)
		}
		return status, body, nil
	default: // no framing: the body runs until the agent closes
		body, err := io.ReadAll(io.LimitReader(r, maxResponse+1))
		if err == nil && len(body) > maxResponse {
			err = fmt.Errorf("response is over %d bytes", maxResponse)
		}
		return status, body, err
	}
}

func readChunked(r *bufio.Reader) ([]byte, error) {
	var body []byte
	for {
		line, err := readLine(r)
		if err != nil {
			return nil, fmt.Errorf("reading a chunk size: %w", err)
		}
		sizeText, _, _ := strings.Cut(line, ";")
		size, err := strconv.ParseInt(strings.TrimSpace(sizeText), 16, 64)
		if err != nil || size < 0 || int64(len(body))+size > maxResponse {
			return nil, fmt.Errorf("bad chunk size %q", line)
		}
		if size == 0 {
			return body, nil // trailers, if any, are not needed
		}
		chunk := make([]byte, size+2) // the chunk and its CRLF
		if _, err := io.ReadFull(r, chunk); err != nil {
			return nil, fmt.Errorf("reading a chunk: %w", err)
		}
		body = append(body, chunk[:size]...)
	}
}

// connectErrno is the errno of a failed connect: ENOENT (no socket yet), ECONNREFUSED (a
// stale socket of a dead agent) or EAGAIN (a full accept backlog); 0 for anything else.
func connectErrno(err error) syscall.Errno {
	var unavailable *agentUnavailable
	if !errors.As(err, &unavailable) || unavailable.sent {
		return 0
	}
	for _, errno := range []syscall.Errno{syscall.ENOENT, syscall.ECONNREFUSED, syscall.EAGAIN} {
		if errors.Is(err, errno) {
			return errno
		}
	}
	return 0
}
