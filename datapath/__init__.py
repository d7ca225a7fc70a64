"""Pod networking: veth wiring (pyroute2) and tc BPF programs (bcc), or routes only."""
