// Command vpcni is the CNI plugin of the vpcni node agent: it turns each CNI invocation
// (environment + network config on stdin) into one request on the agent's Unix socket and
// prints the answer. The agent does all the work; the plugin holds no state except DELs it
// could not deliver (spool.go). Contract: docs/cni.md.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"runtime/debug"
	"strings"
	"syscall"
	"time"
)

// version is the plugin's release, set by the Makefile (-ldflags -X main.version=...).
var version = "dev"

var timeouts = map[string]time.Duration{
	// ADD may wait for an in-flight EC2 allocation (VPCNI_ADD_WAIT_MS) plus wiring and an fsync.
	"ADD": 30 * time.Second, "DEL": 30 * time.Second, "CHECK": 30 * time.Second,
	"GC": 60 * time.Second, "STATUS": 5 * time.Second,
}

// retryBudget bounds the connect retries of one invocation (jittered exponential back-off).
var retryBudget = 2500 * time.Millisecond

// jitter is seeded per process: go 1.19's global math/rand source starts from the same seed in
// every process, which would make every plugin retry in lockstep.
var jitter = rand.New(rand.NewSource(time.Now().UnixNano() ^ int64(os.Getpid())<<32))

// invocation is the CNI environment of one exec.
type invocation struct {
	Command, ContainerID, Netns, IfName, Args, Path string
}

func invocationFromEnv(getenv func(string) string) invocation {
	return invocation{
		Command: getenv("CNI_COMMAND"), ContainerID: getenv("CNI_CONTAINERID"),
		Netns: getenv("CNI_NETNS"), IfName: getenv("CNI_IFNAME"),
		Args: getenv("CNI_ARGS"), Path: getenv("CNI_PATH"),
	}
}

// plugin is one parsed invocation: what every cmd* function works from.
type plugin struct {
	inv  invocation
	conf *netConf
	log  *pluginLog
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Println("vpcni " + version)
		return
	}
	stdin, err := io.ReadAll(io.LimitReader(os.Stdin, maxStdin+1))
	code, out := run(invocationFromEnv(os.Getenv), stdin, err)
	_, _ = os.Stdout.Write(out)
	os.Exit(code)
}

// run executes one invocation and returns the exit status and the bytes for stdout.
func run(inv invocation, stdin []byte, stdinErr error) (code int, out []byte) {
	replyVersion := specVersion
	var log *pluginLog
	defer func() {
		// Belt and braces: a bug must still give the runtime a CNI error, not a stack trace.
		if r := recover(); r != nil {
			log.log("error", "internal error", field{"panic", fmt.Sprint(r)}, field{"stack", string(debug.Stack())})
			code, out = 1, errorOutput(replyVersion, newError(codeTryAgainLater, fmt.Sprint(r), "vpcni plugin internal error"))
		}
	}()
	if inv.Command == "VERSION" {
		return 0, versionOutput(stdin)
	}
	started := time.Now()
	result, err := func() ([]byte, error) {
		if _, known := timeouts[inv.Command]; !known {
			return nil, newError(codeInvalidEnv, "", "CNI_COMMAND %q is not a CNI command", inv.Command)
		}
		if stdinErr != nil {
			return nil, newError(codeDecodeFailure, stdinErr.Error(), "cannot read the network config on stdin")
		}
		if len(stdin) > maxStdin {
			return nil, newError(codeDecodeFailure, "", "network config on stdin is over %d bytes", maxStdin)
		}
		conf, err := parseConf(stdin)
		if err != nil {
			return nil, err
		}
		replyVersion = conf.CNIVersion
		log = newPluginLog(conf, field{"command", inv.Command}, field{"containerID", inv.ContainerID})
		p := &plugin{inv: inv, conf: conf, log: log}
		switch inv.Command {
		case "ADD":
			return p.cmdAdd()
		case "DEL":
			return nil, p.cmdDel()
		case "CHECK":
			return nil, p.cmdCheck()
		case "GC":
			return nil, p.cmdGC()
		default:
			return nil, p.cmdStatus()
		}
	}()
	var cerr *cniError
	if err != nil && !errors.As(err, &cerr) {
		cerr = newError(codeTryAgainLater, err.Error(), "vpcni plugin failed")
	}
	if cerr != nil {
		log.log("error", cerr.Msg, field{"code", cerr.Code}, field{"details", cerr.Details})
		return 1, errorOutput(replyVersion, cerr)
	}
	log.log("info", "done", field{"ms", float64(time.Since(started).Microseconds()) / 1000})
	return 0, result
}

// cmdAdd asks the agent for the pod's address and wiring; its result goes to stdout verbatim,
// in the request's cniVersion (version negotiation is the agent's).
func (p *plugin) cmdAdd() ([]byte, error) {
	body, err := p.podBody()
	if err != nil {
		return nil, err
	}
	answer, err := p.call("POST", "/v1/cni/add", body)
	if err != nil {
		return nil, err
	}
	var result map[string]json.RawMessage
	if json.Unmarshal(answer, &result) != nil || result == nil {
		return nil, newError(codeTryAgainLater, truncate(answer), "agent sent a malformed ADD result")
	}
	return answer, nil
}

// cmdDel releases the attachment. An unreachable agent does not fail it: the DEL is spooled
// for the agent to replay, so pod teardown never wedges and no lease is lost.
func (p *plugin) cmdDel() error {
	body, err := p.podBody()
	if err != nil {
		return err
	}
	_, err = p.call("POST", "/v1/cni/del", body)
	var unavailable *agentUnavailable
	if !errors.As(err, &unavailable) {
		return err
	}
	path, spoolErr := spoolDel(p.conf.Spool, p.conf.Name, p.inv.ContainerID, p.inv.IfName, body, time.Now())
	if spoolErr != nil {
		return newError(codeTryAgainLater, fmt.Sprintf("%v; spooling it: %v", err, spoolErr),
			"vpcni agent is not reachable and the DEL could not be spooled")
	}
	p.log.log("warn", "agent unavailable, DEL spooled for the agent to replay",
		field{"error", err.Error()}, field{"spool", path})
	return nil
}

// cmdCheck asks the agent whether the pod's networking is as ADD left it.
func (p *plugin) cmdCheck() error {
	body, err := p.podBody()
	if err != nil {
		return err
	}
	_, err = p.call("POST", "/v1/cni/check", body)
	return err
}

// cmdGC releases every attachment of the network that is not in the valid list.
func (p *plugin) cmdGC() error {
	valid, err := p.conf.validAttachments()
	if err != nil {
		return err
	}
	body, err := marshal(map[string]any{
		"command": "GC", "cniVersion": p.conf.CNIVersion, "config": p.conf.Raw, "validAttachments": valid,
	})
	if err != nil {
		return err
	}
	_, err = p.call("POST", "/v1/cni/gc", body)
	return err
}

// cmdStatus asks whether the agent can serve ADDs (error 50 when it cannot).
func (p *plugin) cmdStatus() error {
	_, err := p.call("GET", "/v1/cni/status", nil)
	return err
}

var requiredEnv = map[string][]string{
	"ADD":   {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"},
	"CHECK": {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"},
	"DEL":   {"CNI_CONTAINERID", "CNI_IFNAME"}, // the netns may already be gone
}

// podBody is the agent's ADD/DEL/CHECK request.
func (p *plugin) podBody() ([]byte, error) {
	values := map[string]string{
		"CNI_CONTAINERID": p.inv.ContainerID, "CNI_NETNS": p.inv.Netns, "CNI_IFNAME": p.inv.IfName,
	}
	var missing []string
	for _, name := range requiredEnv[p.inv.Command] {
		if values[name] == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return nil, newError(codeInvalidEnv, "", "%s needs %s", p.inv.Command, strings.Join(missing, ", "))
	}
	args, err := parseCNIArgs(p.inv.Args)
	if err != nil {
		return nil, err
	}
	return marshal(map[string]any{
		"command": p.inv.Command, "cniVersion": p.conf.CNIVersion, "containerID": p.inv.ContainerID,
		"netns": p.inv.Netns, "ifName": p.inv.IfName, "args": args, "path": p.inv.Path,
		"config": p.conf.Raw,
	})
}

// call sends one request, retrying a connect that failed for a reason that passes (ENOENT or
// ECONNREFUSED while the agent restarts, only for DEL; EAGAIN on a full backlog, for all).
// A 2xx answer's body is returned; any other answer becomes the agent's CNI error.
func (p *plugin) call(method, target string, body []byte) ([]byte, error) {
	p.log.log("debug", "request", field{"path", target}, field{"body", string(body)})
	giveUp := time.Now().Add(retryBudget)
	delay := 50 * time.Millisecond
	for {
		status, answer, err := httpRequest(p.conf.Socket, method, target, body, timeouts[p.inv.Command])
		if err == nil {
			p.log.log("debug", "response", field{"status", status}, field{"body", string(answer)})
			if status < 200 || status > 299 {
				return nil, agentError(status, answer)
			}
			return answer, nil
		}
		errno := connectErrno(err)
		retry := errno != 0 && (p.inv.Command == "DEL" || errno == syscall.EAGAIN)
		// Jitter, so concurrent plugins waiting for one agent spread their retries out.
		pause := time.Duration(jitter.Int63n(int64(delay))) + delay/2
		if !retry || time.Now().Add(pause).After(giveUp) {
			if p.inv.Command == "DEL" {
				return nil, err // cmdDel spools it
			}
			code := codeTryAgainLater
			if p.inv.Command == "STATUS" {
				code = codeNotAvailable
			}
			return nil, newError(code, err.Error(), "vpcni agent is not reachable")
		}
		p.log.log("debug", "agent not reachable, retrying", field{"error", err.Error()})
		time.Sleep(pause)
		delay *= 2
	}
}

// agentError is the agent's {"code","msg","details"}, or try-again if it sent anything else.
func agentError(status int, body []byte) *cniError {
	var answer struct {
		Code    *int            `json:"code"`
		Msg     json.RawMessage `json:"msg"`
		Details json.RawMessage `json:"details"`
	}
	if json.Unmarshal(body, &answer) != nil || answer.Code == nil {
		return newError(codeTryAgainLater, truncate(body), "agent answered HTTP %d", status)
	}
	return &cniError{Code: *answer.Code, Msg: jsonText(answer.Msg), Details: jsonText(answer.Details)}
}

// jsonText is a JSON string's value, or any other JSON value's text.
func jsonText(raw json.RawMessage) string {
	var text string
	if json.Unmarshal(raw, &text) == nil {
		return text
	}
	return string(raw)
}

func truncate(body []byte) string {
	if len(body) > 512 {
		body = body[:512]
	}
	return strings.ToValidUTF8(string(body), "\uFFFD")
}

// marshal encodes without HTML escaping, so the agent gets the runtime's text unchanged.
func marshal(value any) ([]byte, error) {
	var buf bytes.Buffer
	encoder := json.NewEncoder(&buf)
	encoder.SetEscapeHTML(false)
	if err := encoder.Encode(value); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

func errorOutput(version string, e *cniError) []byte {
	out, err := marshal(struct {
		CNIVersion string `json:"cniVersion"`
		*cniError
	}{version, e})
	if err != nil { // cannot happen for strings and ints; never print nothing
		out = []byte(`{"cniVersion":"` + specVersion + `","code":11,"msg":"vpcni plugin failed"}`)
	}
	return append(out, '\n')
}

// versionOutput answers VERSION locally, echoing the caller's cniVersion when it is supported.
func versionOutput(stdin []byte) []byte {
	asked := specVersion
	var doc map[string]json.RawMessage
	if json.Unmarshal(stdin, &doc) == nil {
		var v string
		if json.Unmarshal(doc["cniVersion"], &v) == nil && supported(v) {
			asked = v
		}
	}
	out, _ := marshal(map[string]any{"cniVersion": asked, "supportedVersions": supportedVersions})
	return out
}
