"""vpcni benchmarks: each measures vpcni and a peer side by side in one run, as ratios."""
