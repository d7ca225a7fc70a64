package main

import "fmt"

// CNI spec error codes this plugin reports itself; the agent may answer with any other.
const (
	codeIncompatibleVersion = 1
	codeInvalidEnv          = 4
	codeDecodeFailure       = 6
	codeInvalidConfig       = 7
	codeTryAgainLater       = 11
	codeNotAvailable        = 50
)

// cniError is the spec's error object, printed on stdout with exit status 1.
type cniError struct {
	Code    int    `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

func (e *cniError) Error() string {
	if e.Details == "" {
		return e.Msg
	}
	return e.Msg + ": " + e.Details
}

func newError(code int, details string, format string, args ...any) *cniError {
	return &cniError{Code: code, Msg: fmt.Sprintf(format, args...), Details: details}
}
