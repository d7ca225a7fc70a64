package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"sort"
	"strings"
	"unicode/utf8"
)

const (
	specVersion   = "1.1.0"
	defaultSocket = "/run/vpcni/agent.sock"
	// The agent refuses bodies over 64 KiB; a config 16 times that is garbage, not a network.
	maxStdin = 1 << 20
	// sun_path holds 108 bytes with the terminating NUL.
	maxSocketPath = 107
)

var supportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// podArgs are the CNI_ARGS keys forwarded to the agent; each is "" when absent.
var podArgs = []string{"K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"}

// logLevels maps pluginLogLevel (any case) to a threshold; "fatal" is aws-node's quietest.
var logLevels = map[string]int{"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "fatal": 50}

// netConf is the part of the network config the plugin uses; the agent gets Raw, verbatim.
type netConf struct {
	Raw        json.RawMessage
	CNIVersion string
	Name       string
	Socket     string
	Spool      string
	LogFile    string
	LogLevel   string
	keys       map[string]json.RawMessage
}

func supported(version string) bool {
	for _, v := range supportedVersions {
		if v == version {
			return true
		}
	}
	return false
}

// stringKey reads an optional string member; present but not a string is an error.
func stringKey(keys map[string]json.RawMessage, key string, nullOK bool) (string, bool, error) {
	raw, ok := keys[key]
	if !ok || (nullOK && string(raw) == "null") {
		return "", false, nil
	}
	var value string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &value) != nil {
		return "", true, newError(codeInvalidConfig, "", "%s must be a string", key)
	}
	return value, true, nil
}

// parseConf decodes and checks the network config on stdin: only the keys the plugin uses
// itself; the agent checks mtu and vethPrefix, so those rules live in one place.
func parseConf(stdin []byte) (*netConf, error) {
	if !utf8.Valid(stdin) {
		return nil, newError(codeDecodeFailure, "", "network config on stdin is not UTF-8")
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &keys); err != nil || keys == nil {
		details := "not a JSON object"
		if err != nil {
			details = err.Error()
		}
		return nil, newError(codeDecodeFailure, details, "network config on stdin is not a JSON object")
	}
	conf := &netConf{Raw: bytes.TrimSpace(stdin), keys: keys, Socket: defaultSocket, LogLevel: "info"}
	version, _, err := stringKey(keys, "cniVersion", false)
	if err != nil || version == "" {
		return nil, newError(codeInvalidConfig, "", "network config has no cniVersion")
	}
	if !supported(version) {
		return nil, newError(codeIncompatibleVersion, "supported: "+strings.Join(supportedVersions, ", "),
			"cniVersion %s is not supported", version)
	}
	conf.CNIVersion = version
	conf.Name, _, _ = stringKey(keys, "name", false) // the agent rejects a name that is not a string
	if socket, present, err := stringKey(keys, "socket", false); err != nil {
		return nil, err
	} else if present {
		conf.Socket = socket
	}
	if !filepath.IsAbs(conf.Socket) || strings.ContainsRune(conf.Socket, 0) {
		return nil, newError(codeInvalidConfig, "", "socket must be an absolute path")
	}
	if len(conf.Socket) > maxSocketPath {
		// Longer would fail to connect and look like an absent agent.
		return nil, newError(codeInvalidConfig, "", "socket path is longer than %d bytes", maxSocketPath)
	}
	conf.Spool = filepath.Join(filepath.Dir(conf.Socket), "del-spool")
	if spool, present, err := stringKey(keys, "delSpool", false); err != nil {
		return nil, err
	} else if present {
		if !filepath.IsAbs(spool) || strings.ContainsRune(spool, 0) {
			return nil, newError(codeInvalidConfig, "", "delSpool must be an absolute path")
		}
		conf.Spool = spool
	}
	if conf.LogFile, _, err = stringKey(keys, "pluginLogFile", true); err != nil {
		return nil, err
	}
	if strings.ContainsRune(conf.LogFile, 0) {
		return nil, newError(codeInvalidConfig, "", "pluginLogFile must not contain NUL")
	}
	if level, present, err := stringKey(keys, "pluginLogLevel", true); err != nil {
		return nil, err
	} else if present {
		if _, known := logLevels[strings.ToLower(level)]; !known {
			names := make([]string, 0, len(logLevels))
			for name := range logLevels {
				names = append(names, name)
			}
			sort.Strings(names)
			return nil, newError(codeInvalidConfig, "", "pluginLogLevel must be one of %s", strings.Join(names, ", "))
		}
		conf.LogLevel = level
	}
	return conf, nil
}

// validAttachments is GC's list: libcni sends both spellings (the spec renamed the key).
// No list is an error: the agent would read it as "nothing is valid" and release every pod.
func (c *netConf) validAttachments() (json.RawMessage, error) {
	raw, ok := c.keys["cni.dev/valid-attachments"]
	if !ok {
		raw, ok = c.keys["cni.dev/attachments"]
	}
	if !ok || len(raw) == 0 || raw[0] != '[' {
		return nil, newError(codeInvalidConfig, "", "GC needs cni.dev/valid-attachments (a list)")
	}
	return raw, nil
}

// parseCNIArgs reads CNI_ARGS (K=V;K=V) as libcni's LoadArgs does: unknown keys are an error
// unless IgnoreUnknown is true (kubelet always sets it).
func parseCNIArgs(raw string) (map[string]string, error) {
	pairs := map[string]string{}
	for _, item := range strings.Split(raw, ";") {
		if item == "" {
			continue
		}
		key, value, found := strings.Cut(item, "=")
		if !found || key == "" {
			return nil, newError(codeInvalidEnv, "", "CNI_ARGS: invalid pair %q", item)
		}
		pairs[key] = value
	}
	ignore := strings.ToLower(pairs["IgnoreUnknown"])
	delete(pairs, "IgnoreUnknown")
	args := make(map[string]string, len(podArgs))
	for _, key := range podArgs {
		args[key] = pairs[key]
		delete(pairs, key)
	}
	if len(pairs) > 0 && ignore != "1" && ignore != "true" {
		unknown := make([]string, 0, len(pairs))
		for key := range pairs {
			unknown = append(unknown, key)
		}
		sort.Strings(unknown)
		return nil, newError(codeInvalidEnv, "", "CNI_ARGS: unknown args %v", unknown)
	}
	return args, nil
}
