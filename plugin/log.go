package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// field is one key of a log line; lines keep their keys in the order given.
type field struct {
	key   string
	value any
}

// pluginLog appends JSON lines to pluginLogFile ("stderr" and "stdout" both mean stderr:
// stdout carries the CNI result). It never fails the command and never writes to stdout.
type pluginLog struct {
	path      string
	threshold int
	fields    []field
}

func newPluginLog(conf *netConf, fields ...field) *pluginLog {
	return &pluginLog{path: conf.LogFile, threshold: logLevels[strings.ToLower(conf.LogLevel)], fields: fields}
}

func (l *pluginLog) log(level, msg string, fields ...field) {
	if l == nil || l.path == "" || logLevels[level] < l.threshold {
		return
	}
	now := time.Now().UTC()
	all := append([]field{{"ts", now.Format("2006-01-02T15:04:05.000000Z")}, {"level", level}, {"msg", msg}}, l.fields...)
	var line bytes.Buffer
	line.WriteByte('{')
	for i, f := range append(all, fields...) {
		if i > 0 {
			line.WriteByte(',')
		}
		key, _ := json.Marshal(f.key)
		value, err := json.Marshal(f.value)
		if err != nil {
			value, _ = json.Marshal(err.Error())
		}
		line.Write(key)
		line.WriteByte(':')
		line.Write(value)
	}
	line.WriteString("}\n")
	if l.path == "stderr" || l.path == "stdout" {
		_, _ = os.Stderr.Write(line.Bytes())
		return
	}
	_ = os.MkdirAll(filepath.Dir(l.path), 0o755)
	file, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return // losing a log line must never fail a pod's network set-up
	}
	// One write() per line on O_APPEND: lines of concurrent plugins do not interleave.
	_, _ = file.Write(line.Bytes())
	_ = file.Close()
}
