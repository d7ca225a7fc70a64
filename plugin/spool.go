package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// maxSpooled bounds the spool: a node runs a few hundred pods at most, so more files than
// this means the agent is gone for good, and the runtime then hears the failure and retries.
const maxSpooled = 1024

// spoolName is the file of one attachment: a later DEL of the same (network, containerID,
// ifName) replaces it, so the agent replays each at most once.
func spoolName(network, containerID, ifName string) string {
	sum := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifName))
	return "del-" + hex.EncodeToString(sum[:16]) + ".json"
}

// spoolDel records a DEL the agent could not take, durably (temp file, fsync, rename, fsync
// of the directory), for the agent to replay (agent/cni/spool.py). It returns the file's path.
func spoolDel(dir, network, containerID, ifName string, body []byte, now time.Time) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	name := spoolName(network, containerID, ifName)
	path := filepath.Join(dir, name)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	count := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "del-") && e.Name() != name {
			count++
		}
	}
	if count >= maxSpooled {
		return "", fmt.Errorf("spool %s already holds %d DELs", dir, count)
	}
	doc, err := json.Marshal(struct {
		Version   int             `json:"version"`
		SpooledAt float64         `json:"spooledAt"` // Unix seconds, like the agent's lease times
		Request   json.RawMessage `json:"request"`
	}{1, float64(now.UnixNano()) / 1e9, body})
	if err != nil {
		return "", err
	}
	var suffix [8]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return "", err
	}
	tmp := filepath.Join(dir, ".tmp-"+name+"-"+hex.EncodeToString(suffix[:]))
	file, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return "", err
	}
	_, err = file.Write(doc)
	if err == nil {
		err = file.Sync()
	}
	if closeErr := file.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return "", err
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		_ = d.Close()
		if err != nil {
			return "", err
		}
	}
	return path, nil
}
