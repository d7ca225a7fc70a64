"""The CNI side of the agent: installing the `vpcni` plugin (a Go binary, plugin/) and its
network config on a node, and replaying the DELs the plugin spooled while the agent was away."""
