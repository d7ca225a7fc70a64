package main

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

const addResult = `{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/pod1"}],` +
	`"ips":[{"address":"10.0.1.17/32","gateway":"169.254.1.1","interface":0}]}`

// shortDir is a temp dir short enough for AF_UNIX paths (t.TempDir can exceed 108 bytes).
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "vpcni-go-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

type request struct {
	method, path string
	body         map[string]any
}

// fakeAgent answers each path with a fixed (status, body) and records what it was sent.
type fakeAgent struct {
	socket   string
	mu       sync.Mutex
	requests []request
	answers  map[string][2]string
}

func startAgent(t *testing.T, answers map[string][2]string) *fakeAgent {
	t.Helper()
	agent := &fakeAgent{socket: filepath.Join(shortDir(t), "agent.sock"), answers: map[string][2]string{
		"/v1/cni/add": {"200", addResult}, "/v1/cni/del": {"200", "{}"}, "/v1/cni/check": {"200", "{}"},
		"/v1/cni/gc": {"200", `{"released":[]}`}, "/v1/cni/status": {"200", `{"msg":"ok"}`},
	}}
	for k, v := range answers {
		agent.answers[k] = v
	}
	listener, err := net.Listen("unix", agent.socket)
	if err != nil {
		t.Fatal(err)
	}
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		var body map[string]any
		_ = json.Unmarshal(data, &body)
		agent.mu.Lock()
		agent.requests = append(agent.requests, request{r.Method, r.URL.Path, body})
		agent.mu.Unlock()
		answer := agent.answers[r.URL.Path]
		status := map[string]int{"200": 200, "400": 400, "409": 409, "500": 500, "502": 502, "503": 503}[answer[0]]
		w.WriteHeader(status)
		_, _ = w.Write([]byte(answer[1]))
	})}
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(func() { server.Close() })
	return agent
}

func podEnv(command string) invocation {
	return invocation{Command: command, ContainerID: "0123abcd", Netns: "/var/run/netns/cni-1234",
		IfName: "eth0", Path: "/opt/cni/bin",
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=5f0c"}
}

func conf(socket string, extra string) []byte {
	return []byte(`{"cniVersion":"1.1.0","name":"vpcni","type":"vpcni","socket":"` + socket + `"` + extra + `}`)
}

func decodeError(t *testing.T, out []byte) cniError {
	t.Helper()
	var e struct {
		CNIVersion string `json:"cniVersion"`
		cniError
	}
	if err := json.Unmarshal(out, &e); err != nil {
		t.Fatalf("stdout is not a CNI error: %q", out)
	}
	return e.cniError
}

func TestForwarding(t *testing.T) {
	agent := startAgent(t, nil)
	cases := []struct {
		inv    invocation
		stdin  []byte
		method string
		path   string
		stdout string
	}{
		{podEnv("ADD"), conf(agent.socket, `,"mtu":9001`), "POST", "/v1/cni/add", addResult},
		{podEnv("CHECK"), conf(agent.socket, `,"prevResult":{"ips":[]}`), "POST", "/v1/cni/check", ""},
		{podEnv("DEL"), conf(agent.socket, ""), "POST", "/v1/cni/del", ""},
		{invocation{Command: "GC"}, conf(agent.socket, `,"cni.dev/valid-attachments":[]`), "POST", "/v1/cni/gc", ""},
		{invocation{Command: "STATUS"}, conf(agent.socket, ""), "GET", "/v1/cni/status", ""},
	}
	for _, c := range cases {
		t.Run(c.inv.Command, func(t *testing.T) {
			agent.requests = nil
			code, out := run(c.inv, c.stdin, nil)
			if code != 0 || string(out) != c.stdout {
				t.Fatalf("exit %d, stdout %q", code, out)
			}
			if len(agent.requests) != 1 || agent.requests[0].method != c.method || agent.requests[0].path != c.path {
				t.Fatalf("requests %+v", agent.requests)
			}
			body := agent.requests[0].body
			var config map[string]any
			_ = json.Unmarshal(c.stdin, &config)
			if c.method == "POST" && (!reflect.DeepEqual(body["config"], config) || body["cniVersion"] != "1.1.0") {
				t.Fatalf("body %v", body)
			}
		})
	}
	add := startAgent(t, nil)
	run(podEnv("ADD"), conf(add.socket, ""), nil)
	want := map[string]any{"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0",
		"K8S_POD_INFRA_CONTAINER_ID": "abc", "K8S_POD_UID": "5f0c"}
	body := add.requests[0].body
	if !reflect.DeepEqual(body["args"], want) || body["containerID"] != "0123abcd" ||
		body["netns"] != "/var/run/netns/cni-1234" || body["ifName"] != "eth0" || body["path"] != "/opt/cni/bin" {
		t.Fatalf("ADD body %v", body)
	}
}

func TestErrors(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 20000) + "1" + strings.Repeat("}", 20000)
	agent := startAgent(t, map[string][2]string{
		"/v1/cni/add":    {"503", `{"code":11,"msg":"no free IP yet","details":"waited 5000 ms"}`},
		"/v1/cni/check":  {"502", "<html>bad gateway</html>"},
		"/v1/cni/del":    {"500", deep},
		"/v1/cni/status": {"503", `{"code":50,"msg":"no IP can be had"}`},
	})
	garbled := startAgent(t, map[string][2]string{"/v1/cni/add": {"200", "[1,2]"}})
	absent := filepath.Join(shortDir(t), "absent.sock")
	noEnv := podEnv("ADD")
	noEnv.Netns = ""
	badArgs := podEnv("ADD")
	badArgs.Args = "K8S_POD_NAME=a;FOO=bar"
	cases := []struct {
		name  string
		inv   invocation
		stdin []byte
		want  cniError
	}{
		{"agent error verbatim", podEnv("ADD"), conf(agent.socket, ""), cniError{11, "no free IP yet", "waited 5000 ms"}},
		{"non-JSON agent error", podEnv("CHECK"), conf(agent.socket, ""), cniError{11, "agent answered HTTP 502", "<html>bad gateway</html>"}},
		{"deeply nested agent error", podEnv("DEL"), conf(agent.socket, ""), cniError{11, "agent answered HTTP 500", deep[:512]}},
		{"status not available", invocation{Command: "STATUS"}, conf(agent.socket, ""), cniError{50, "no IP can be had", ""}},
		{"malformed ADD result", podEnv("ADD"), conf(garbled.socket, ""), cniError{11, "agent sent a malformed ADD result", "[1,2]"}},
		{"unreachable ADD", podEnv("ADD"), conf(absent, ""), cniError{Code: 11, Msg: "vpcni agent is not reachable"}},
		{"unreachable STATUS", invocation{Command: "STATUS"}, conf(absent, ""), cniError{Code: 50, Msg: "vpcni agent is not reachable"}},
		{"GC without a list", invocation{Command: "GC"}, conf(agent.socket, ""), cniError{Code: 7, Msg: "GC needs cni.dev/valid-attachments (a list)"}},
		{"no command", invocation{}, conf(agent.socket, ""), cniError{Code: 4, Msg: `CNI_COMMAND "" is not a CNI command`}},
		{"missing netns", noEnv, conf(agent.socket, ""), cniError{Code: 4, Msg: "ADD needs CNI_NETNS"}},
		{"unknown CNI_ARGS", badArgs, conf(agent.socket, ""), cniError{Code: 4, Msg: "CNI_ARGS: unknown args [FOO]"}},
		{"stdin over 1 MiB", podEnv("ADD"), make([]byte, maxStdin+1), cniError{Code: 6, Msg: "network config on stdin is over 1048576 bytes"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out := run(c.inv, c.stdin, nil)
			got := decodeError(t, out)
			if c.want.Details == "" {
				got.Details = ""
			}
			if code != 1 || got != c.want {
				t.Fatalf("exit %d, got %+v", code, got)
			}
		})
	}
	code, out := run(podEnv("ADD"), nil, errors.New("read /dev/stdin: bad file descriptor"))
	if code != 1 || decodeError(t, out).Code != codeDecodeFailure {
		t.Fatalf("closed stdin: exit %d, %q", code, out)
	}
}

func TestVersion(t *testing.T) {
	cases := []struct{ stdin, want string }{
		{`{"cniVersion":"0.4.0"}`, "0.4.0"},
		{``, specVersion},
		{`{"cniVersion":"9.9.9"}`, specVersion},
		{`{"cniVersion":7}`, specVersion},
		{strings.Repeat("[", 50000), specVersion},
	}
	for _, c := range cases {
		code, out := run(invocation{Command: "VERSION"}, []byte(c.stdin), nil)
		var doc struct {
			CNIVersion        string   `json:"cniVersion"`
			SupportedVersions []string `json:"supportedVersions"`
		}
		if code != 0 || json.Unmarshal(out, &doc) != nil || doc.CNIVersion != c.want ||
			!reflect.DeepEqual(doc.SupportedVersions, supportedVersions) {
			t.Errorf("%.20q: exit %d, %s", c.stdin, code, out)
		}
	}
}

func TestUnreachableDelIsSpooled(t *testing.T) {
	retryBudget = 200 * time.Millisecond
	dir := shortDir(t)
	spool := filepath.Join(dir, "spool")
	stdin := conf(filepath.Join(dir, "absent.sock"), `,"delSpool":"`+spool+`"`)
	for i := 0; i < 2; i++ { // a repeated DEL replaces its file
		if code, out := run(podEnv("DEL"), stdin, nil); code != 0 || len(out) != 0 {
			t.Fatalf("exit %d, %q", code, out)
		}
	}
	entries, _ := os.ReadDir(spool)
	if len(entries) != 1 || entries[0].Name() != spoolName("vpcni", "0123abcd", "eth0") {
		t.Fatalf("spool holds %v", entries)
	}
	data, _ := os.ReadFile(filepath.Join(spool, entries[0].Name()))
	var doc struct {
		Version int
		Request map[string]any
	}
	if err := json.Unmarshal(data, &doc); err != nil || doc.Version != 1 || doc.Request["command"] != "DEL" ||
		doc.Request["containerID"] != "0123abcd" {
		t.Fatalf("spool file %s (%v)", data, err)
	}
	if info, _ := os.Stat(spool); info.Mode().Perm() != 0o700 {
		t.Fatalf("spool dir mode %v", info.Mode())
	}
}

func TestFullOrBrokenSpoolFailsTheDel(t *testing.T) {
	retryBudget = 0
	dir := shortDir(t)
	full := filepath.Join(dir, "full")
	_ = os.Mkdir(full, 0o700)
	for i := 0; i < maxSpooled; i++ {
		_ = os.WriteFile(filepath.Join(full, spoolName("n", string(rune('a'+i%26))+strings.Repeat("x", i), "eth0")), nil, 0o600)
	}
	notDir := filepath.Join(dir, "file")
	_ = os.WriteFile(notDir, nil, 0o600)
	for _, spool := range []string{full, notDir} {
		stdin := conf(filepath.Join(dir, "absent.sock"), `,"delSpool":"`+spool+`"`)
		code, out := run(podEnv("DEL"), stdin, nil)
		if code != 1 || decodeError(t, out).Code != codeTryAgainLater {
			t.Errorf("%s: exit %d, %s", spool, code, out)
		}
	}
}

func TestPluginLog(t *testing.T) {
	agent := startAgent(t, map[string][2]string{"/v1/cni/del": {"500", `{"code":5,"msg":"checkpoint write failed"}`}})
	logFile := filepath.Join(shortDir(t), "logs", "plugin.log")
	cases := []struct {
		level string
		want  []string // level/command/msg of each line
	}{
		{"INFO", []string{"info/ADD/done", "error/DEL/checkpoint write failed"}},
		{"debug", []string{"debug/ADD/request", "debug/ADD/response", "info/ADD/done",
			"debug/DEL/request", "debug/DEL/response", "error/DEL/checkpoint write failed"}},
		{"FATAL", nil},
	}
	for _, c := range cases {
		_ = os.Remove(logFile)
		stdin := conf(agent.socket, `,"pluginLogFile":"`+logFile+`","pluginLogLevel":"`+c.level+`"`)
		if code, out := run(podEnv("ADD"), stdin, nil); code != 0 || string(out) != addResult {
			t.Fatalf("%s: ADD exit %d %s", c.level, code, out)
		}
		run(podEnv("DEL"), stdin, nil)
		data, _ := os.ReadFile(logFile)
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var entry map[string]any
			if line == "" {
				continue
			}
			if err := json.Unmarshal([]byte(line), &entry); err != nil || entry["containerID"] != "0123abcd" {
				t.Fatalf("bad line %q", line)
			}
			got = append(got, entry["level"].(string)+"/"+entry["command"].(string)+"/"+entry["msg"].(string))
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: got %v", c.level, got)
		}
	}
	stdin := conf(agent.socket, `,"pluginLogFile":"/proc/vpcni/plugin.log"`)
	if code, out := run(podEnv("ADD"), stdin, nil); code != 0 || string(out) != addResult {
		t.Fatalf("an unwritable log failed the ADD: %d %s", code, out)
	}
}
