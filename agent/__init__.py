"""vpcni: a node agent that gives Kubernetes pods real VPC IP addresses."""
