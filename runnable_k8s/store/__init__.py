"""The run store: every change to a run's records in Redis, and every key name, in one place.

Both sides import it (the producer to enqueue, cancel and read; the worker to claim, lease,
finish and rescue); it imports only `runnable_k8s.protocol` and `runnable_k8s.errors`, never
either side. Each state change is one Lua script, kept in `lua/<name>.lua` beside this file and
loaded once per client (`scripts.load`), so a change of state is one round trip and atomic.
Records are signed by the callers (Redis cannot check a signature): a script compares the
exact bytes it expects to replace, never trusts what it reads.
"""
