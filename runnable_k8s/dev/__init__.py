"""`runnable-k8s dev`: local workers autoscaled from the ScaledObject's own parameters."""
