"""Kubernetes side of runnable-k8s: render, check, deploy and inspect the worker manifests.

The manifests live in the repository's `k8s/` folder (a kustomize base, overlays and
components) and ship in the wheel as `runnable_k8s/cluster/kustomize/`. The `cluster` click
group in `runnable_k8s.cluster.cli` is the user-facing entry point; everything here is
private to the package. Heavy dependencies (`kubernetes`, `yaml`) are imported lazily.
"""
